fn main() -> anyhow::Result<()> {
    common::ebpf_build::build_ebpf()
}
