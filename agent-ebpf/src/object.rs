//! What every kernel object of this crate carries: a panic handler (a
//! `no_std` binary needs one; the verifier rejects any path that reaches
//! it) and its licence for the kernel.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

// GPL-compatible, for LSM hooks and GPL-only helpers: see Cargo.toml.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
