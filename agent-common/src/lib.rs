//! Types shared by the kernel programs (`agent-ebpf`), the daemon (`agent`) and the backend.
//!
//! Everything outside the `user` feature is `#![no_std]`, `#[repr(C)]` and free of pointers so that
//! the same definitions describe the kernel maps on both sides. Logic that the kernel runs on these
//! plain structs (histogram bucketing, counter folding, end-of-connection classification) lives here
//! as plain functions so it is unit tested in userspace too.
#![cfg_attr(not(any(feature = "user", feature = "sigv4")), no_std)]

pub mod fold;
pub mod hist;
pub mod maps;
pub mod record;

#[cfg(feature = "user")]
pub mod mountinfo;
#[cfg(feature = "user")]
pub mod report;
#[cfg(feature = "sigv4")]
pub mod sigv4;
