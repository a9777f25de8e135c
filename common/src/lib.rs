//! What the lessons share.
//!
//! The crate root is `no_std` and dependency-free, because the eBPF programs use it too: it holds the
//! constants that both sides of a lesson must agree on. Everything else sits behind a feature, so that
//! the kernel side never sees it:
//!
//! - `user`: the plumbing of every step binary (loading, attach with fallback, logs, signals);
//! - `build`: the `build.rs` helper that compiles a step's eBPF crate;
//! - `trigger`: a listening socket on demand, for `cargo xtask listen` and the tests;
//! - `testing`: what the kernel tests of every step share.
#![cfg_attr(
    not(any(feature = "user", feature = "build", feature = "trigger")),
    no_std
)]

#[cfg(feature = "build")]
pub mod ebpf_build;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "trigger")]
pub mod trigger;
#[cfg(feature = "user")]
pub mod user;

/// The Rust toolchain that builds the eBPF programs (and, through `cargo xtask`, everything else).
///
/// bpf-linker reads the LLVM bitcode that rustc emits, so both must use the same LLVM: Rust 1.98.0
/// ships LLVM 22, and `cargo xtask setup` builds bpf-linker against that very LLVM. A newer `stable`
/// (1.99 emits LLVM 23 bitcode) would break the link, hence the pin.
pub const PINNED_RUST: &str = "1.98.0";

/// Where `cargo xtask setup` installs bpf-linker, relative to the workspace root
/// (`.cargo/config.toml` names the same file as the linker of the BPF target).
pub const BPF_LINKER: &str = ".tools/bin/bpf-linker";

/// The kernel function behind `listen()` on TCP sockets (IPv4 and IPv6): the article's hook.
pub const LISTEN_FUNCTION: &str = "inet_listen";

/// The tracepoint that reports TCP state changes; a socket that starts listening enters `TCP_LISTEN`.
pub const STATE_TRACEPOINT: &str = "inet_sock_set_state";

/// `TCP_LISTEN` from the kernel's `include/net/tcp_states.h`.
pub const TCP_LISTEN: i32 = 10;

// A panic cannot unwind in the kernel: the verifier rejects any path that could reach this, so it
// only has to exist for the eBPF programs to link.
#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
