fn main() -> anyhow::Result<()> {
    common::ebpf_build::build_ebpf("step2-backlog-ebpf")
}
