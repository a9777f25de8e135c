//! Lesson 9's kernel side is the program in `main.rs`, which the step's `build.rs` builds for the
//! BPF target. This empty library lets the step depend on this crate at build time (as aya-template
//! does), so that cargo rebuilds the step whenever its kernel side changes.
#![no_std]
