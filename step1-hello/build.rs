fn main() -> anyhow::Result<()> {
    common::ebpf_build::build_ebpf("step1-hello-ebpf")
}
