//! The issuer and subject of the server's leaf certificate as short text ("O=Let's Encrypt,
//! CN=R3"), read with a tiny DER walker instead of a full X.509 parser: the agent must stay small,
//! and the issuer is all a person needs to tell a real CA from an intercepting middlebox's (the
//! subject only tells a self-signed certificate).
//!
//! Pure and defensive: any malformed input gives `None`, never a panic; the text is bounded and
//! free of control characters because it is shown in terminals and dashboards.

/// Longest issuer text kept.
pub const MAX_ISSUER_CHARS: usize = 200;

const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_OID: u8 = 0x06;
const TAG_INTEGER: u8 = 0x02;
const TAG_VERSION: u8 = 0xA0;

/// The issuer distinguished name of a DER certificate, attributes in certificate order.
pub fn issuer_text(cert_der: &[u8]) -> Option<String> {
    let (issuer, _) = issuer_and_rest(cert_der)?;
    let text = name_text(issuer)?;
    (!text.is_empty()).then_some(text)
}

/// The subject distinguished name, as [`issuer_text`] gives the issuer's. A certificate whose
/// subject is its issuer is self-signed.
pub fn subject_text(cert_der: &[u8]) -> Option<String> {
    let (_, rest) = issuer_and_rest(cert_der)?;
    let (_, rest) = expect(rest, TAG_SEQUENCE)?; // validity
    let (subject, _) = expect(rest, TAG_SEQUENCE)?;
    let text = name_text(subject)?;
    (!text.is_empty()).then_some(text)
}

/// The issuer name's content and what follows it in the to-be-signed certificate.
fn issuer_and_rest(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (cert, _) = expect(cert_der, TAG_SEQUENCE)?;
    let (tbs, _) = expect(cert, TAG_SEQUENCE)?;
    let mut rest = tbs;
    let (tag, _, after) = read_tlv(rest)?;
    if tag == TAG_VERSION {
        rest = after;
    }
    let (_, rest) = expect(rest, TAG_INTEGER)?; // serial number
    let (_, rest) = expect(rest, TAG_SEQUENCE)?; // signature algorithm
    expect(rest, TAG_SEQUENCE)
}

fn name_text(mut name: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !name.is_empty() {
        let (mut rdn, after) = expect(name, TAG_SET)?;
        name = after;
        while !rdn.is_empty() {
            let (attribute, after) = expect(rdn, TAG_SEQUENCE)?;
            rdn = after;
            let (oid, value) = expect(attribute, TAG_OID)?;
            let (value_tag, value, _) = read_tlv(value)?;
            if let (Some(label), Some(text)) =
                (attribute_label(oid), string_value(value_tag, value))
            {
                parts.push(format!("{label}={text}"));
            }
        }
    }
    let joined = parts.join(", ");
    Some(
        joined
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .take(MAX_ISSUER_CHARS)
            .collect(),
    )
}

/// Short labels of the attributes people recognise (2.5.4.x); others are left out.
fn attribute_label(oid: &[u8]) -> Option<&'static str> {
    match oid {
        [0x55, 0x04, 0x03] => Some("CN"),
        [0x55, 0x04, 0x06] => Some("C"),
        [0x55, 0x04, 0x07] => Some("L"),
        [0x55, 0x04, 0x08] => Some("ST"),
        [0x55, 0x04, 0x0A] => Some("O"),
        [0x55, 0x04, 0x0B] => Some("OU"),
        _ => None,
    }
}

fn string_value(tag: u8, value: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, TeletexString (read as UTF-8, lossily)
        0x0C | 0x13 | 0x16 | 0x14 => Some(String::from_utf8_lossy(value).into_owned()),
        // BMPString: UTF-16BE
        0x1E => {
            let pairs = value.chunks_exact(2);
            if !pairs.remainder().is_empty() {
                return None;
            }
            let units: Vec<u16> = pairs
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            Some(String::from_utf16_lossy(&units))
        }
        _ => None,
    }
}

/// Reads one element that must carry `tag`: its content and what follows it.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (got, content, rest) = read_tlv(input)?;
    (got == tag).then_some((content, rest))
}

/// Reads one DER tag-length-value (single-byte tags, definite lengths up to 4 length bytes).
fn read_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7F);
        if count == 0 || count > 4 || input.len() < count {
            return None;
        }
        let mut length = 0usize;
        for &b in &input[..count] {
            length = (length << 8) | usize::from(b);
        }
        input = &input[count..];
        length
    };
    if input.len() < length {
        return None;
    }
    Some((tag, &input[..length], &input[length..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert_issued_by(names: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name = rcgen::DistinguishedName::new();
        for (kind, value) in names {
            ca.distinguished_name.push(kind.clone(), *value);
        }
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.lab.test".to_string()]).unwrap();
        leaf.signed_by(&leaf_key, &ca_cert, &ca_key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn reads_the_issuer_of_a_real_certificate() {
        let der = cert_issued_by(&[
            (rcgen::DnType::CountryName, "CZ"),
            (rcgen::DnType::OrganizationName, "Lab CA Ltd"),
            (rcgen::DnType::CommonName, "Lab Root R1"),
        ]);
        assert_eq!(
            issuer_text(&der).as_deref(),
            Some("C=CZ, O=Lab CA Ltd, CN=Lab Root R1")
        );
    }

    #[test]
    fn reads_the_subject_and_tells_a_self_signed_certificate() {
        let der = cert_issued_by(&[(rcgen::DnType::CommonName, "Lab Root R1")]);
        let subject = subject_text(&der).unwrap();
        assert_ne!(Some(subject), issuer_text(&der));
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["mx.lab.test".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mx.lab.test");
        let own = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(subject_text(&own).as_deref(), Some("CN=mx.lab.test"));
        assert_eq!(subject_text(&own), issuer_text(&own));
    }

    #[test]
    fn control_characters_and_length_are_bounded() {
        let long = format!("evil\u{1b}[31m{}", "x".repeat(400));
        let der = cert_issued_by(&[(rcgen::DnType::CommonName, long.as_str())]);
        let text = issuer_text(&der).unwrap();
        assert!(!text.contains('\u{1b}'));
        assert_eq!(text.chars().count(), MAX_ISSUER_CHARS);
    }

    #[test]
    fn malformed_input_gives_none() {
        assert_eq!(issuer_text(&[]), None);
        assert_eq!(issuer_text(&[0x30]), None);
        assert_eq!(issuer_text(&[0x30, 0x84, 0xFF, 0xFF, 0xFF, 0xFF]), None);
        assert_eq!(issuer_text(&[0x30, 0x03, 0x30, 0x01, 0x02]), None);
        // Every truncation of a real certificate is handled without a panic.
        let der = cert_issued_by(&[(rcgen::DnType::CommonName, "CA")]);
        for cut in 0..der.len() {
            let _ = issuer_text(&der[..cut]);
        }
    }
}
