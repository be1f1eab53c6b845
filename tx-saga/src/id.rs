//! [`SagaId`]: the identity of one saga instance.

use std::fmt;
use std::str::FromStr;

use tx_sqlx::TxError;

/// The identity of one saga instance, returned by
/// [`SagaEngine::start`](crate::SagaEngine::start): a random 128-bit id, written like a UUID.
///
/// It is `Copy`, so pass it around by value; [`Display`](fmt::Display) and
/// [`FromStr`] give the text form an operator sees in logs and types back into
/// [`SagaEngine::resume`](crate::SagaEngine::resume).
///
/// ```
/// use tx_saga::SagaId;
///
/// let id: SagaId = "0b9c5f3e-6d0a-4f6e-9a51-3c2d1e0f4a7b".parse().unwrap();
/// assert_eq!(id.to_string(), "0b9c5f3e-6d0a-4f6e-9a51-3c2d1e0f4a7b");
/// assert!("not an id".parse::<SagaId>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SagaId(u128);

impl SagaId {
    /// A fresh random id (version 4 UUID layout).
    pub(crate) fn random() -> SagaId {
        let raw = fastrand::u128(..);
        // Version 4, variant 1: the text form is a valid UUID for tools that check.
        SagaId((raw & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62))
    }

    /// The 128-bit value.
    ///
    /// ```
    /// let id: tx_saga::SagaId = "00000000-0000-0000-0000-00000000002a".parse().unwrap();
    /// assert_eq!(id.as_u128(), 42);
    /// ```
    #[must_use]
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (v >> 96) as u32,
            (v >> 80) as u16,
            (v >> 64) as u16,
            (v >> 48) as u16,
            v & 0xFFFF_FFFF_FFFF
        )
    }
}

impl fmt::Debug for SagaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SagaId({self})")
    }
}

impl FromStr for SagaId {
    type Err = TxError;

    /// Parses the text form (`8-4-4-4-12` hex digits).
    fn from_str(s: &str) -> Result<SagaId, TxError> {
        let bad = || {
            TxError::InvalidArgument {
            message: format!(
                "{s:?} is not a saga id: expected 32 hex digits as 8-4-4-4-12, as printed by SagaId's Display"
            )
            .into(),
        }
        };
        let groups: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if groups.len() != 5 || groups.iter().zip(lens).any(|(g, n)| g.len() != n) {
            return Err(bad());
        }
        let hex: String = groups.concat();
        u128::from_str_radix(&hex, 16)
            .map(SagaId)
            .map_err(|_| bad())
    }
}

impl serde::Serialize for SagaId {
    fn serialize<Ser: serde::Serializer>(&self, s: Ser) -> Result<Ser::Ok, Ser::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SagaId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SagaId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips() {
        for _ in 0..100 {
            let id = SagaId::random();
            let text = id.to_string();
            assert_eq!(text.len(), 36);
            assert_eq!(&text[14..15], "4", "version nibble in {text}");
            assert_eq!(text.parse::<SagaId>().unwrap(), id);
        }
        assert!(
            "0b9c5f3e6d0a4f6e9a513c2d1e0f4a7b"
                .parse::<SagaId>()
                .is_err()
        );
        assert!(
            "0b9c5f3e-6d0a-4f6e-9a51-3c2d1e0f4a7g"
                .parse::<SagaId>()
                .is_err()
        );
    }
}
