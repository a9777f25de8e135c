fn main() -> anyhow::Result<()> {
    support::ebpf_build::build_ebpf()
}
