//! What the lessons' tests and `cargo xtask` share, written once and kept away
//! from what learners read:
//!
//! - the Rust toolchain the eBPF programs are built with, and where bpf-linker lives;
//! - [`running`]: start a step binary, wait until it is attached, read its lines with time limits;
//! - [`trigger`]: listening sockets on demand, in a network namespace or a process of their own;
//! - [`kernel`]: what the kernel tests need to know of the kernel, and whether programs are loaded;
//! - [`table`]: a lesson's table, read by the names in its header;
//! - [`transcripts`]: what the book shows each lesson printing, recorded from real runs.
//!
//! No aya here: xtask builds on whatever toolchain `cargo` starts with, and installs the pinned one.

pub mod kernel;
pub mod running;
pub mod table;
pub mod transcripts;
pub mod trigger;

/// The Rust toolchain that builds the eBPF programs (and, through `cargo xtask`, everything else).
///
/// bpf-linker reads the LLVM bitcode that rustc emits, so both must use the same LLVM: Rust 1.98.0
/// ships LLVM 22, and `cargo xtask setup` builds bpf-linker against that very LLVM. A newer `stable`
/// (1.99 emits LLVM 23 bitcode) would break the link, hence the pin.
pub const PINNED_RUST: &str = "1.98.0";

/// Where `cargo xtask setup` installs bpf-linker, relative to the workspace root
/// (`.cargo/config.toml` names the same file as the linker of the BPF target). Each step's
/// `build.rs` and `rust-toolchain.toml` name the pinned Rust too (a lesson builds on its own).
pub const BPF_LINKER: &str = ".tools/bin/bpf-linker";
