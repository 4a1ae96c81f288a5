//! What gradients look like on the wire: f32, or 16-bit floats that halve the bytes
//! (f16 as ChainerMN's 1024-GPU run used; bf16 with f32's range). Sums are always
//! accumulated in f32; only what travels is rounded.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Wire {
    #[default]
    F32,
    /// IEEE half precision: 10-bit mantissa, largest finite value 65504.
    F16,
    /// bfloat16: 7-bit mantissa, f32's exponent range.
    Bf16,
}

impl Wire {
    pub const ALL: [Wire; 3] = [Wire::F32, Wire::F16, Wire::Bf16];
    pub fn name(self) -> &'static str {
        match self {
            Wire::F32 => "f32",
            Wire::F16 => "f16",
            Wire::Bf16 => "bf16",
        }
    }
    /// The format as one byte (its place in [`Wire::ALL`]), for a message to carry.
    pub fn code(self) -> u8 {
        Wire::ALL
            .iter()
            .position(|&w| w == self)
            .expect("every format is in ALL") as u8
    }
    /// The format a message's byte names.
    pub fn from_code(code: u8) -> Wire {
        Wire::ALL[usize::from(code)]
    }
    /// Bytes one value takes on the wire.
    pub fn bytes(self) -> usize {
        match self {
            Wire::F32 => 4,
            Wire::F16 | Wire::Bf16 => 2,
        }
    }
    /// Largest finite magnitude the format holds.
    pub fn max(self) -> f32 {
        match self {
            Wire::F16 => half::f16::MAX.to_f32(),
            Wire::F32 | Wire::Bf16 => f32::MAX,
        }
    }

    pub fn encode(self, v: f32) -> u16 {
        match self {
            Wire::F16 => half::f16::from_f32(v).to_bits(),
            Wire::Bf16 => half::bf16::from_f32(v).to_bits(),
            Wire::F32 => unreachable!("f32 travels as it is"),
        }
    }
    pub fn decode(self, bits: u16) -> f32 {
        match self {
            Wire::F16 => half::f16::from_bits(bits).to_f32(),
            Wire::Bf16 => half::bf16::from_bits(bits).to_f32(),
            Wire::F32 => unreachable!("f32 travels as it is"),
        }
    }
    /// Rounds `v` to what arrives after a trip over the wire.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Wire::F32 => v,
            w => w.decode(w.encode(v)),
        }
    }
}

impl std::str::FromStr for Wire {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Wire::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown gradient type '{s}': use f32, f16 or bf16"))
    }
}

impl std::fmt::Display for Wire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representable_values_round_trip_exactly() {
        for w in [Wire::F16, Wire::Bf16] {
            for v in [0.0f32, -0.0, 1.0, -2.5, 0.15625, 1024.0, -0.03125] {
                assert_eq!(w.round(v), v, "{w} {v}");
            }
        }
    }

    #[test]
    fn rounding_error_is_within_half_an_ulp() {
        // f16: 11 significant bits, relative error ≤ 2^-11; bf16: 8 bits, ≤ 2^-8.
        for (w, rel) in [(Wire::F16, 2f32.powi(-11)), (Wire::Bf16, 2f32.powi(-8))] {
            for i in 1..2000 {
                let v = (i as f32 * 0.7331).sin() * 100.0;
                let r = w.round(v);
                assert!((r - v).abs() <= rel * v.abs() * 1.0001, "{w}: {v} -> {r}");
            }
        }
    }

    #[test]
    fn f16_overflows_to_infinity_bf16_does_not() {
        assert_eq!(Wire::F16.round(65504.0), 65504.0);
        assert!(Wire::F16.round(70000.0).is_infinite());
        assert!(Wire::Bf16.round(1e30).is_finite());
        assert_eq!(Wire::F16.bytes(), 2);
    }
}
