//! The zero-copy decoder on arbitrary bytes: never panics, and what it
//! accepts is self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = wire::StunView::parse(data) {
        assert_eq!(v.bytes().len(), data.len());
        let txid = v.transaction_id();
        for (t, value) in v.attrs() {
            assert!(value.len() <= data.len());
            if t == wire::attr::XOR_PEER_ADDRESS {
                let _ = wire::decode_xor_address(value, &txid);
            }
        }
        let _ = (v.method(), v.class(), v.integrity(), v.has_fingerprint());
    }
    if let Some((_, payload)) = wire::parse_channel_data(data) {
        assert!(payload.len() + 4 <= data.len());
    }
    if let Some(n) = wire::stream_frame_len(data) {
        assert!(n <= 20 + 65_535 + 3);
    }
});
