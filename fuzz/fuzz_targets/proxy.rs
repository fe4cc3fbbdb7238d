//! The PROXY header parser on arbitrary bytes: never panics, never
//! claims more bytes than it was given or than the cap, and reads a
//! header the same way whatever follows it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::proxy;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(h)) = proxy::parse(data) {
        assert!(h.len <= data.len() && h.len <= proxy::MAX_HEADER_BYTES);
        // The header alone gives the same answer.
        assert_eq!(proxy::parse(&data[..h.len]), Ok(Some(h)));
    }
});
