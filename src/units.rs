//! How ddlab writes amounts of bytes, everywhere: sizes in binary units with their IEC
//! names (B, KiB, MiB, GiB, TiB: 1 KiB = 1024 B), as buffer and message sizes are powers
//! of two; rates in decimal gigabytes per second (1 GB/s = 10⁹ B/s), as nccl-tests, OSU
//! and network links state them.

/// `b` bytes: exact sizes as whole units ("4 B", "64 KiB", "4 MiB"), others with one
/// decimal ("72.6 MiB").
pub fn bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && b >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    let size = 1u64 << (10 * unit);
    if b.is_multiple_of(size) {
        format!("{} {}", b / size, UNITS[unit])
    } else {
        format!("{:.1} {}", b as f64 / size as f64, UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_are_binary_with_iec_names_whole_when_exact() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(4), "4 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 10), "64 KiB");
        assert_eq!(bytes(4 << 20), "4 MiB");
        assert_eq!(bytes(76_100_000), "72.6 MiB");
        assert_eq!(bytes(3 << 30), "3 GiB");
        assert_eq!(bytes(5 << 40), "5 TiB");
        assert_eq!(bytes(u64::MAX), "16777216.0 TiB");
    }
}
