#!/bin/sh
# Installs this offline kit for a clone of the listen-trace repository, with no network:
#
#   sh install.sh ~/listen-trace
#
# 1. rustup, if this user has none (the kit's rustup-init, with no toolchain to download);
# 2. Rust @RUST@ with rust-src, clippy and rustfmt, copied into rustup's toolchains, and made the
#    default toolchain when there is none;
# 3. bpf-linker, into the repository's .tools/ (where `cargo xtask setup` would build it);
# 4. cargo told to take every crate from the kit's vendor/ folder and never use the network, in
#    cargo's own config.toml ($CARGO_HOME, ~/.cargo by default). Remove the lines between the
#    "listen-trace offline kit" markers there to use crates.io again.
#
# Then: cd ~/listen-trace && cargo xtask run step 1. The book is in the kit's book/ folder
# (book/en/index.html, book/zh/index.html).
set -eu

kit="$(cd "$(dirname "$0")" && pwd)"
repo="${1:-$HOME/listen-trace}"
if [ ! -f "$repo/Cargo.toml" ] || [ ! -d "$repo/xtask" ]; then
    echo "install.sh: no listen-trace repository at $repo: name its clone, for example: sh $0 ~/listen-trace" >&2
    exit 1
fi
repo="$(cd "$repo" && pwd)"
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
rustup_home="${RUSTUP_HOME:-$HOME/.rustup}"
toolchain="@TOOLCHAIN_FOLDER@"

echo "[1/4] rustup"
if command -v rustup >/dev/null 2>&1; then
    echo "      installed: $(command -v rustup)"
elif [ -x "$cargo_home/bin/rustup" ]; then
    echo "      installed: $cargo_home/bin/rustup (not on PATH: add $cargo_home/bin to it)"
else
    "$kit/rustup-init" -y --no-modify-path --default-toolchain none --profile minimal
    echo "      installed into $cargo_home/bin: add it to PATH (. \"$cargo_home/env\")"
fi
PATH="$cargo_home/bin:$PATH"
export PATH

echo "[2/4] Rust @RUST@"
mkdir -p "$rustup_home/toolchains"
if [ -d "$rustup_home/toolchains/$toolchain" ]; then
    echo "      installed: $rustup_home/toolchains/$toolchain"
else
    cp -a "$kit/toolchain/$toolchain" "$rustup_home/toolchains/"
    echo "      copied to $rustup_home/toolchains/$toolchain"
fi
if ! rustup default >/dev/null 2>&1; then
    rustup default @RUST@
fi

echo "[3/4] bpf-linker, into $repo/.tools"
mkdir -p "$repo/.tools/bin" "$repo/.tools/llvm/lib"
cp "$kit/bpf-linker/bpf-linker" "$repo/.tools/bin/bpf-linker"
cp "$kit/bpf-linker/bpf-linker.stamp" "$repo/.tools/bpf-linker.stamp"
# bpf-linker loads the toolchain's own libLLVM from ../llvm/lib, beside its folder.
for library in "$rustup_home/toolchains/$toolchain/lib"/libLLVM*.so*; do
    ln -sf "$library" "$repo/.tools/llvm/lib/"
    ln -sf "$library" "$repo/.tools/llvm/lib/libLLVM.so"
done
"$repo/.tools/bin/bpf-linker" --version

echo "[4/4] crates from $kit/vendor, in $cargo_home/config.toml"
mkdir -p "$cargo_home"
config="$cargo_home/config.toml"
if grep -q "listen-trace offline kit" "$config" 2>/dev/null; then
    echo "      already there"
elif grep -q '^\[source\.crates-io\]' "$config" 2>/dev/null || grep -q '^\[net\]' "$config" 2>/dev/null; then
    echo "install.sh: $config already has a [source.crates-io] or [net] section: add these lines to it yourself:" >&2
    printf '[source.crates-io]\nreplace-with = "listen-trace-vendored"\n[source.listen-trace-vendored]\ndirectory = "%s"\n[net]\noffline = true\n' "$kit/vendor" >&2
    exit 1
else
    cat >>"$config" <<EOF
# listen-trace offline kit: every crate from the kit, no network (remove down to the end marker)
[source.crates-io]
replace-with = "listen-trace-vendored"

[source.listen-trace-vendored]
directory = "$kit/vendor"

[net]
offline = true
# listen-trace offline kit: end
EOF
fi

echo "done: cd $repo && cargo xtask run step 1"
