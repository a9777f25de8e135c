//! The deliberate bugs of `cargo xtask mutants`, one per fact a lesson's tests must check.

/// Where the tests that catch a mutant run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Where {
    /// Here, on the attach paths this machine has.
    Host,
    /// In `vm::STOCK_KERNEL` under qemu, with kprobes and fentry.
    Guest,
}

/// One deliberate bug: in `file` of lesson `lesson`, the text `from` (found exactly once) becomes
/// `to`.
pub(super) struct Mutant {
    pub(super) name: &'static str,
    pub(super) lesson: u8,
    pub(super) file: &'static str,
    pub(super) from: &'static str,
    pub(super) to: &'static str,
    pub(super) caught: Where,
    /// The tests expected to catch it (as `cargo test` names them, module path included): they
    /// must pass without the mutant and at least one must fail with it.
    pub(super) tests: &'static [&'static str],
}

pub(super) const MUTANTS: [Mutant; 18] = [
    Mutant {
        name: "the hello says other words",
        lesson: 1,
        file: "step1-hello/ebpf/src/main.rs",
        from: r#"info!(ctx, "Hello World!");"#,
        to: r#"info!(ctx, "Hello Worlb!");"#,
        caught: Where::Host,
        tests: &["the_tracepoint_says_hello_for_every_listen"],
    },
    Mutant {
        name: "the kprobe on the wrong function (inet_release)",
        lesson: 1,
        file: "step1-hello/src/main.rs",
        from: "kprobe.attach(LISTEN_FUNCTION, 0)?;",
        to: r#"kprobe.attach("inet_release", 0)?;"#,
        caught: Where::Guest,
        tests: &[
            "an_explicit_kprobe_says_hello_or_names_the_missing_config",
            "auto_attaches_the_first_path_this_kernel_accepts",
        ],
    },
    Mutant {
        name: "the tracepoint's backlog read 4 bytes past sk_max_ack_backlog",
        lesson: 2,
        file: "step2-backlog/ebpf/src/main.rs",
        from: "read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog)",
        to: "read_field::<u32>(sk, SOCK_OFFSETS.load().sk_max_ack_backlog + 4)",
        caught: Where::Host,
        tests: &["the_backlog_is_exact_on_every_attach_path"],
    },
    Mutant {
        name: "the kprobe's backlog from the first argument (the socket)",
        lesson: 2,
        file: "step2-backlog/ebpf/src/main.rs",
        from: "ctx.arg::<u32>(1)",
        to: "ctx.arg::<u32>(0)",
        caught: Where::Guest,
        tests: &["the_backlog_is_exact_on_every_attach_path"],
    },
    Mutant {
        name: "the port in network byte order",
        lesson: 3,
        file: "step3-addr-port/ebpf/src/main.rs",
        from: "let port = port_from_network_order(sport);",
        to: "let port = sport;",
        caught: Where::Host,
        tests: &["addresses_and_ports_are_exact_on_every_attach_path"],
    },
    Mutant {
        name: "the IPv4 address read one byte off",
        lesson: 3,
        file: "step3-addr-port/ebpf/src/main.rs",
        from: "read_field(sk, offsets.skc_rcv_saddr)?",
        to: "read_field(sk, offsets.skc_rcv_saddr + 1)?",
        caught: Where::Host,
        tests: &["addresses_and_ports_are_exact_on_every_attach_path"],
    },
    Mutant {
        name: "the netns inode read from the socket, not from its namespace",
        lesson: 4,
        file: "step4-netns-perf/ebpf/src/main.rs",
        from: "let netns: u32 = read_field(net, offsets.net_ns_inum)?;",
        to: "let netns: u32 = read_field(sk, offsets.net_ns_inum)?;",
        caught: Where::Host,
        tests: &["rows_carry_the_exact_values_on_every_attach_path"],
    },
    Mutant {
        name: "the IPv6 branch dropped",
        lesson: 4,
        file: "step4-netns-perf/ebpf/src/main.rs",
        from: "let addr: [u8; 16] = if family == AF_INET6 {",
        to: "let addr: [u8; 16] = if family == AF_INET6 && false {",
        caught: Where::Host,
        tests: &["rows_carry_the_exact_values_on_every_attach_path"],
    },
    Mutant {
        name: "the IPv4 address printed with its bytes reversed",
        lesson: 4,
        file: "step4-netns-perf/src/main.rs",
        from: "Ipv4Addr::new(a, b, c, d)",
        to: "Ipv4Addr::new(d, c, b, a)",
        caught: Where::Host,
        tests: &["rows_carry_the_exact_values_on_every_attach_path"],
    },
    Mutant {
        name: "a lost event not counted",
        lesson: 8,
        file: "step8-ring-buffer/ebpf/src/main.rs",
        from: "count(COUNTER_DROPPED);",
        to: "let _ = COUNTER_DROPPED;",
        caught: Where::Host,
        tests: &["a_full_ring_counts_each_event_it_drops"],
    },
    Mutant {
        name: "the syscall path's backlog not capped to somaxconn",
        lesson: 6,
        file: "step6-syscalls/ebpf/src/main.rs",
        from: "let backlog = if backlog > somaxconn {",
        to: "let backlog = if backlog > somaxconn && somaxconn == 0 {",
        caught: Where::Host,
        tests: &["every_call_is_one_row_with_its_final_port_and_result"],
    },
    Mutant {
        name: "the syscall path's result dropped (always 0)",
        lesson: 6,
        file: "step6-syscalls/ebpf/src/main.rs",
        from: "report_syscall(&ctx, sock, call.backlog, result as i32)",
        to: "report_syscall(&ctx, sock, call.backlog, 0)",
        caught: Where::Host,
        tests: &["every_call_is_one_row_with_its_final_port_and_result"],
    },
    Mutant {
        name: "the exit side on the wrong tracepoint (sys_exit_bind)",
        lesson: 6,
        file: "step6-syscalls/src/main.rs",
        from: r#"("listen_sys_exit", SYSCALL_EXIT_TRACEPOINT),"#,
        to: r#"("listen_sys_exit", "sys_exit_bind"),"#,
        caught: Where::Host,
        tests: &[
            "rows_carry_the_exact_values_on_every_attach_path",
            "every_call_is_one_row_with_its_final_port_and_result",
        ],
    },
    Mutant {
        name: "the fexit program's backlog and result swapped",
        lesson: 5,
        file: "step5-ends/ebpf/src/main.rs",
        from: "    if !in_mptcp_listen() {\n        let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));",
        to: "    if !in_mptcp_listen() {\n        let (sock, backlog, result): (*const u8, u32, i32) = (ctx.arg(0), ctx.arg(2), ctx.arg(1));",
        caught: Where::Guest,
        tests: &[
            "rows_carry_the_exact_values_on_every_attach_path",
            "every_call_is_one_row_with_its_final_port_and_result",
        ],
    },
    Mutant {
        name: "the sockops path's failed start reported as a success",
        lesson: 7,
        file: "step7-sockops/ebpf/src/main.rs",
        from: "let result = Some(-EADDRINUSE);",
        to: "let result = Some(0);",
        caught: Where::Host,
        tests: &["every_call_is_one_row_with_its_final_port_and_result"],
    },
    Mutant {
        name: "the sockops path keeps the starts of threads outside its cgroup",
        lesson: 7,
        file: "step7-sockops/ebpf/src/main.rs",
        from: "if ATTACHED_CGROUP.current_task_under_cgroup(0) != Ok(true) {",
        to: "if ATTACHED_CGROUP.current_task_under_cgroup(0).is_err() {",
        caught: Where::Host,
        tests: &["the_sockops_path_in_a_container_reports_only_the_container"],
    },
    Mutant {
        name: "the sockops path leaves a successful start behind",
        lesson: 7,
        file: "step7-sockops/ebpf/src/main.rs",
        from: "let protocol = take_start(thread)",
        to: "let protocol = unsafe { STARTS.get(&thread) }.copied()",
        caught: Where::Host,
        tests: &["the_sockops_path_keeps_no_start_after_its_call"],
    },
    Mutant {
        name: "the sockops path's thread taken for its process",
        lesson: 9,
        file: "step9-tool/ebpf/src/main.rs",
        from: "tid: read_field(task, offsets.task_pid)?,",
        to: "tid: read_field(task, offsets.task_tgid)?,",
        caught: Where::Host,
        tests: &["events_carry_the_exact_values_on_every_attach_path"],
    },
];
