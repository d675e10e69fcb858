//! Identity labels an agent claims for itself, and the rules that keep them harmless.
//!
//! Labels are untrusted input to the collector: they are length-bounded and free of control
//! characters here, and escaped wherever they are shown. Markup is *not* rejected (a provider may
//! well be called `<b>`); showing it as text is the display's job.

use crate::error::WireError;
use crate::limits::MAX_LABEL_BYTES;

wire_record! {
    /// Where an agent runs. Empty means "not known".
    pub struct Labels {
        pub provider: String,
        pub account: String,
        pub region: String,
        pub instance: String,
    }
    required = 0;
}

impl Labels {
    /// Checks every label; on success the labels are returned trimmed.
    pub fn validated(self) -> Result<Labels, WireError> {
        Ok(Labels {
            provider: validate_label("provider", &self.provider)?,
            account: validate_label("account", &self.account)?,
            region: validate_label("region", &self.region)?,
            instance: validate_label("instance", &self.instance)?,
        })
    }
}

/// One label value: at most [`MAX_LABEL_BYTES`] bytes, no control characters, trimmed.
pub fn validate_label(name: &'static str, value: &str) -> Result<String, WireError> {
    let value = value.trim();
    if value.len() > MAX_LABEL_BYTES {
        return Err(WireError::BadLabel {
            name,
            reason: format!(
                "{} bytes, longer than the limit of {MAX_LABEL_BYTES}",
                value.len()
            ),
        });
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(WireError::BadLabel {
            name,
            reason: format!("contains the control character U+{:04X}", u32::from(c)),
        });
    }
    Ok(value.to_string())
}

/// An agent id (the certificate's identity): 1 to 64 of `A-Z a-z 0-9 . _ -`, not starting with
/// a dot or dash, so it is safe as a file name, a label and a URL path segment.
pub fn validate_agent_id(id: &str) -> Result<(), WireError> {
    let bad = |reason: &str| WireError::BadLabel {
        name: "agent id",
        reason: reason.to_string(),
    };
    if id.is_empty() || id.len() > 64 {
        return Err(bad("must be 1 to 64 characters"));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(bad("must not start with '.' or '-'"));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may contain only A-Z, a-z, 0-9, '.', '_' and '-'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded_and_control_free() {
        let ok = Labels {
            provider: " aws ".into(),
            account: "<img src=x onerror=alert(1)>".into(),
            ..Default::default()
        };
        let v = ok.validated().unwrap();
        assert_eq!(v.provider, "aws");
        assert_eq!(v.account, "<img src=x onerror=alert(1)>");
        let long = Labels {
            region: "x".repeat(MAX_LABEL_BYTES + 1),
            ..Default::default()
        };
        assert!(long.validated().unwrap_err().to_string().contains("region"));
        let ctl = Labels {
            instance: "a\u{1b}[31m".into(),
            ..Default::default()
        };
        assert!(ctl.validated().unwrap_err().to_string().contains("U+001B"));
    }

    #[test]
    fn agent_ids() {
        assert!(validate_agent_id("gcp-vm-01.eu").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_agent_id(bad).is_err(), "{bad:?}");
        }
    }
}
