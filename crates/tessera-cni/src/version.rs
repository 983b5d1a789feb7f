//! The CNI spec versions the plugin speaks and what each of them allows.

/// Every version the plugin accepts, oldest first (what VERSION reports).
pub const SUPPORTED: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest supported version: used for VERSION output and for errors raised before the
/// configuration's own version is known.
pub const LATEST: &str = "1.1.0";

/// A supported spec version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// 0.3.0: rich results, `ips[].version`.
    V0_3_0,
    /// 0.3.1: same shapes as 0.3.0.
    V0_3_1,
    /// 0.4.0: adds CHECK and `prevResult` on DEL.
    V0_4_0,
    /// 1.0.0: drops `ips[].version`.
    V1_0_0,
    /// 1.1.0: adds GC, STATUS and route attributes (mtu, advmss, priority, table, scope).
    V1_1_0,
}

impl Version {
    /// Parses a `cniVersion` value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "0.3.0" => Self::V0_3_0,
            "0.3.1" => Self::V0_3_1,
            "0.4.0" => Self::V0_4_0,
            "1.0.0" => Self::V1_0_0,
            "1.1.0" => Self::V1_1_0,
            _ => return None,
        })
    }

    /// The version as written in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V0_3_0 => "0.3.0",
            Self::V0_3_1 => "0.3.1",
            Self::V0_4_0 => "0.4.0",
            Self::V1_0_0 => "1.0.0",
            Self::V1_1_0 => "1.1.0",
        }
    }

    /// Results of this version carry `"version": "4"|"6"` on each IP.
    pub fn ip_version_field(self) -> bool {
        self < Self::V1_0_0
    }

    /// CHECK exists from 0.4.0 on.
    pub fn has_check(self) -> bool {
        self >= Self::V0_4_0
    }

    /// GC and STATUS exist from 1.1.0 on; so do the extra route attributes.
    pub fn has_gc_status(self) -> bool {
        self >= Self::V1_1_0
    }
}

/// The VERSION verb's output.
pub fn version_info() -> serde_json::Value {
    serde_json::json!({ "cniVersion": LATEST, "supportedVersions": SUPPORTED })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_supported_version_parses_and_prints_back() {
        for text in SUPPORTED {
            assert_eq!(Version::parse(text).unwrap().as_str(), text);
        }
        assert_eq!(Version::parse("0.2.0"), None);
        assert_eq!(Version::parse("1.1"), None);
    }
}
