//! [`Money`]: an exact, non-negative amount of a currency, in integer picos (10⁻¹² of a unit).
//!
//! Costs are sums of `tokens × price per token`. DeepSeek's prices are given per million tokens
//! with a few decimals (say 0.028), so one token costs a fraction of a micro-unit: integer
//! picos hold every price with up to 6 decimals per million tokens exactly, and `u128` leaves
//! room for any sum. Nothing here ever goes through a float: amounts are parsed from their
//! decimal text and written back as the same exact decimal.

use std::fmt;
use std::str::FromStr;

/// Picos in one unit of a currency.
const PICOS_PER_UNIT: u128 = 1_000_000_000_000;

/// An exact, non-negative amount of money, in picos (10⁻¹²) of a currency unit. The currency
/// is kept beside it (in a price table, a [`Charge`](crate::protocol::Charge)).
///
/// It reads and writes plain decimals (`"0.028"`, `"12"`, `"0.000000028"`), up to 12 decimal
/// places; serde accepts a string, an integer or a float (a float is read through its shortest
/// decimal text, so TOML's `0.028` is exactly 0.028) and writes a string.
///
/// ```
/// use tower_deepseek_core::money::Money;
///
/// let price: Money = "0.28".parse().unwrap(); // per million tokens
/// let per_token = price.picos() / 1_000_000;
/// let cost = Money::from_picos(per_token * 1_234);
/// assert_eq!(cost.to_string(), "0.00034552");
/// assert_eq!(cost.micros(), 345); // whole millionths, rounded down
/// assert!("-1".parse::<Money>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(u128);

impl Money {
    /// Nothing.
    pub const ZERO: Money = Money(0);

    /// An amount of `picos` (10⁻¹² of a unit).
    pub const fn from_picos(picos: u128) -> Self {
        Money(picos)
    }

    /// The amount in picos (10⁻¹² of a unit).
    pub const fn picos(self) -> u128 {
        self.0
    }

    /// The amount in whole millionths of a unit, rounded down.
    pub const fn micros(self) -> u128 {
        self.0 / 1_000_000
    }

    /// The sum, saturating at the largest amount.
    #[must_use]
    pub const fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// The difference, or zero when `other` is larger.
    #[must_use]
    pub const fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// Whether this is zero.
    pub const fn is_zero(self) -> bool {
        self.0 == 0
    }
}

/// A text that is not a non-negative decimal with at most 12 decimal places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMoneyError(&'static str);

impl fmt::Display for ParseMoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an amount of money: {}", self.0)
    }
}

impl std::error::Error for ParseMoneyError {}

impl FromStr for Money {
    type Err = ParseMoneyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty() && frac.is_empty() {
            return Err(ParseMoneyError("expected digits, as 0.28"));
        }
        if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ParseMoneyError(
                "expected a non-negative decimal, as 0.28 (no sign, exponent or separator)",
            ));
        }
        if frac.len() > 12 {
            return Err(ParseMoneyError("more than 12 decimal places"));
        }
        let too_large = ParseMoneyError("too large");
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| too_large.clone())?
        };
        let mut picos: u128 = 0;
        for (i, d) in frac.bytes().enumerate() {
            picos += u128::from(d - b'0') * 10u128.pow(11 - i as u32);
        }
        whole
            .checked_mul(PICOS_PER_UNIT)
            .and_then(|w| w.checked_add(picos))
            .map(Money)
            .ok_or(too_large)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / PICOS_PER_UNIT;
        let frac = self.0 % PICOS_PER_UNIT;
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:012}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({self})")
    }
}

impl serde::Serialize for Money {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Money {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative decimal amount, as \"0.28\" or 0.28")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Money, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Money, E> {
                Ok(Money(u128::from(v) * PICOS_PER_UNIT))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Money, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom("an amount of money cannot be negative"))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Money, E> {
                if !v.is_finite() {
                    return Err(E::custom("an amount of money must be finite"));
                }
                // The shortest text that reads back as `v`: what the file said (0.028 stays
                // 0.028), never the binary approximation.
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_exactly() {
        for (text, picos, back) in [
            ("0", 0, "0"),
            ("12", 12 * PICOS_PER_UNIT, "12"),
            ("0.028", 28_000_000_000, "0.028"),
            (".5", 500_000_000_000, "0.5"),
            ("3.", 3 * PICOS_PER_UNIT, "3"),
            ("0.000000000001", 1, "0.000000000001"),
            ("1.250000", 1_250_000_000_000, "1.25"),
        ] {
            let m: Money = text.parse().unwrap();
            assert_eq!(m.picos(), picos, "{text}");
            assert_eq!(m.to_string(), back, "{text}");
        }
        for bad in [
            "",
            ".",
            "-1",
            "+1",
            "1e3",
            "1,5",
            "0.0000000000001",
            "1.2.3",
            " 1",
        ] {
            assert!(bad.parse::<Money>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn serde_reads_strings_integers_and_floats_exactly() {
        let m: Money = serde_json::from_str("0.028").unwrap();
        assert_eq!(m.picos(), 28_000_000_000);
        let m: Money = serde_json::from_str("\"0.1\"").unwrap();
        assert_eq!(m.picos(), 100_000_000_000);
        let m: Money = serde_json::from_str("7").unwrap();
        assert_eq!(m.picos(), 7 * PICOS_PER_UNIT);
        assert!(serde_json::from_str::<Money>("-7").is_err());
        assert!(serde_json::from_str::<Money>("-0.5").is_err());
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"7\"");
    }
}
