//! A failed TLS handshake in plain words: which certificate fault (expired, not yet valid, wrong
//! name, self-signed, unknown issuer, missing intermediate, …), which protocol fault (a version
//! too old, an alert, plain text where TLS was expected), never a library's debug text. Pure:
//! the error, what the server presented and the first bytes it sent in, one sentence out.

use super::tls::Presented;
use rustls::{AlertDescription, CertificateError, Error as TlsError, PeerIncompatible};
use std::time::{Duration, UNIX_EPOCH};

/// Where the handshake was attempted, for the wording of a plain-text answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPlace {
    /// An implicit-TLS SMTP port (465).
    ImplicitTls,
    /// A port where TLS is the whole probe (the 443 control).
    TlsOnly,
    /// After the server agreed to STARTTLS.
    AfterStarttls,
}

impl TlsPlace {
    fn words(self) -> &'static str {
        match self {
            TlsPlace::ImplicitTls => "on an implicit-TLS port",
            TlsPlace::TlsOnly => "on a TLS port",
            TlsPlace::AfterStarttls => "after agreeing to STARTTLS",
        }
    }
}

/// The failure as a sentence, without the "TLS: " prefix or the issuer suffix.
pub fn describe(
    error: &std::io::Error,
    presented: Option<&Presented>,
    first_bytes: &[u8],
    place: TlsPlace,
) -> String {
    let tls = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<TlsError>());
    match tls {
        Some(e) => describe_tls(e, presented, first_bytes, place),
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof => match plain_text(first_bytes) {
                Some(text) => plain_text_answer(&text, place),
                None => "the server closed the connection during the handshake".into(),
            },
            _ => super::connect::short_io_text(error),
        },
    }
}

fn describe_tls(
    e: &TlsError,
    presented: Option<&Presented>,
    first_bytes: &[u8],
    place: TlsPlace,
) -> String {
    match e {
        TlsError::InvalidCertificate(cert) => describe_certificate(cert, presented),
        TlsError::AlertReceived(AlertDescription::ProtocolVersion) => too_old(),
        TlsError::AlertReceived(alert) => format!(
            "the server ended the handshake with the alert \"{}\"",
            alert_words(*alert)
        ),
        TlsError::PeerIncompatible(
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled,
        ) => too_old(),
        TlsError::PeerIncompatible(_) => {
            "the server offers nothing this host accepts (TLS 1.2 or 1.3 with current ciphers)"
                .into()
        }
        TlsError::InvalidMessage(_) | TlsError::InappropriateMessage { .. } => {
            match plain_text(first_bytes) {
                Some(text) => plain_text_answer(&text, place),
                None => format!("the server's answer {} is not TLS", place.words()),
            }
        }
        TlsError::PeerMisbehaved(_) | TlsError::InappropriateHandshakeMessage { .. } => {
            "the server broke the TLS protocol during the handshake".into()
        }
        TlsError::NoCertificatesPresented => "the server presented no certificate".into(),
        TlsError::DecryptError => "the handshake's integrity check failed".into(),
        TlsError::General(text) => text.clone(),
        _ => "the TLS handshake failed".into(),
    }
}

fn too_old() -> String {
    "the server speaks only TLS versions older than 1.2 (this host requires TLS 1.2 or newer)"
        .into()
}

fn plain_text_answer(text: &str, place: TlsPlace) -> String {
    format!(
        "the server answered in plain text (\"{text}\") {}",
        place.words()
    )
}

/// The first line the server sent, when it reads as text rather than a TLS record.
fn plain_text(first_bytes: &[u8]) -> Option<String> {
    let line = first_bytes
        .split(|b| *b == b'\n' || *b == b'\r')
        .next()
        .unwrap_or(&[]);
    let text: &str = std::str::from_utf8(line).ok()?;
    let printable = !text.is_empty() && text.chars().all(|c| !c.is_control());
    printable.then(|| text.chars().take(60).collect())
}

fn describe_certificate(e: &CertificateError, presented: Option<&Presented>) -> String {
    match e {
        CertificateError::Expired => "the certificate has expired".into(),
        CertificateError::ExpiredContext { not_after, .. } => format!(
            "the certificate expired on {}",
            utc_date(not_after.as_secs())
        ),
        CertificateError::NotValidYet => "the certificate is not valid yet".into(),
        CertificateError::NotValidYetContext { not_before, .. } => format!(
            "the certificate is not valid yet: it starts on {}",
            utc_date(not_before.as_secs())
        ),
        CertificateError::NotValidForName => "the certificate is for another name".into(),
        CertificateError::NotValidForNameContext {
            expected,
            presented: names,
        } => {
            let names: Vec<String> = names.iter().map(|n| plain_name(n)).collect();
            if names.is_empty() {
                format!(
                    "the certificate names no host, so not {}",
                    expected.to_str()
                )
            } else {
                format!(
                    "the certificate is for {}, not for {}",
                    names.join(", "),
                    expected.to_str()
                )
            }
        }
        CertificateError::UnknownIssuer => unknown_issuer(presented),
        CertificateError::Other(other) => match other.0.downcast_ref::<webpki::Error>() {
            Some(webpki::Error::CaUsedAsEndEntity)
                if presented.is_some_and(Presented::self_signed) =>
            {
                self_signed()
            }
            Some(webpki::Error::CaUsedAsEndEntity) => {
                "the server presented a certificate authority's certificate as its own".into()
            }
            Some(webpki::Error::EndEntityUsedAsCa) => {
                "the chain uses a server's certificate as an authority".into()
            }
            Some(
                webpki::Error::PathLenConstraintViolated
                | webpki::Error::MaximumPathDepthExceeded
                | webpki::Error::NameConstraintViolation,
            ) => "the certificate chain breaks its authorities' constraints".into(),
            _ => "the certificate was rejected".into(),
        },
        CertificateError::BadSignature => "the certificate's signature does not verify".into(),
        CertificateError::Revoked => "the certificate has been revoked".into(),
        CertificateError::BadEncoding => "the certificate is malformed".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the certificate is not meant for a TLS server".into()
        }
        CertificateError::UnsupportedSignatureAlgorithmContext { .. }
        | CertificateError::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
            "the certificate is signed with an algorithm this host does not accept".into()
        }
        _ => "the certificate was rejected".into(),
    }
}

fn self_signed() -> String {
    "the certificate is self-signed: no authority this host trusts vouches for it".into()
}

/// An issuer that is not a trusted root, told apart by what the server sent: its own
/// certificate signed by itself, its certificate alone (the intermediate left out), or a chain
/// to an authority this host does not know.
fn unknown_issuer(presented: Option<&Presented>) -> String {
    match presented {
        Some(p) if p.self_signed() => self_signed(),
        Some(p) if p.intermediates == 0 => "the server sent its certificate without the intermediate certificate, and its issuer is not a root this host trusts: a missing intermediate, or an unknown issuer".into(),
        _ => "the certificate's issuer is not an authority this host trusts: TLS interception on the path, or a private CA (use --ca-file)".into(),
    }
}

/// A name as webpki reports it (`DnsName("mx.example")`, `IpAddress(198.18.0.1)`), bare.
fn plain_name(reported: &str) -> String {
    let inner = reported
        .split_once('(')
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or(reported);
    inner
        .trim_matches('"')
        .chars()
        .filter(|c| !c.is_control())
        .take(100)
        .collect()
}

/// A Unix time as its UTC calendar date, "2024-05-01".
pub fn utc_date(secs: u64) -> String {
    let days = (UNIX_EPOCH + Duration::from_secs(secs))
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The alert's name in words ("handshake failure"); its number for alerts without one.
fn alert_words(alert: AlertDescription) -> String {
    let words = match alert {
        AlertDescription::CloseNotify => "close notify",
        AlertDescription::UnexpectedMessage => "unexpected message",
        AlertDescription::BadRecordMac => "bad record MAC",
        AlertDescription::RecordOverflow => "record overflow",
        AlertDescription::HandshakeFailure => "handshake failure",
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::CertificateRevoked => "certificate revoked",
        AlertDescription::CertificateExpired => "certificate expired",
        AlertDescription::CertificateUnknown => "certificate unknown",
        AlertDescription::IllegalParameter => "illegal parameter",
        AlertDescription::UnknownCA => "unknown CA",
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::DecodeError => "decode error",
        AlertDescription::DecryptError => "decrypt error",
        AlertDescription::ProtocolVersion => "protocol version",
        AlertDescription::InsufficientSecurity => "insufficient security",
        AlertDescription::InternalError => "internal error",
        AlertDescription::InappropriateFallback => "inappropriate fallback",
        AlertDescription::UserCanceled => "user canceled",
        AlertDescription::MissingExtension => "missing extension",
        AlertDescription::UnsupportedExtension => "unsupported extension",
        AlertDescription::UnrecognisedName => "unrecognised name",
        AlertDescription::CertificateRequired => "certificate required",
        AlertDescription::NoApplicationProtocol => "no application protocol",
        other => return format!("number {}", u8::from(other)),
    };
    words.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{ServerName, UnixTime};

    fn io(e: TlsError) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }

    fn words(e: TlsError, presented: Option<&Presented>, first: &[u8]) -> String {
        describe(&io(e), presented, first, TlsPlace::ImplicitTls)
    }

    fn cert(e: CertificateError, presented: Option<&Presented>) -> String {
        words(TlsError::InvalidCertificate(e), presented, &[])
    }

    #[test]
    fn certificate_faults_in_plain_words() {
        let day = |secs| UnixTime::since_unix_epoch(Duration::from_secs(secs));
        assert_eq!(
            cert(
                CertificateError::ExpiredContext {
                    time: day(1_800_000_000),
                    not_after: day(1_704_067_200),
                },
                None
            ),
            "the certificate expired on 2024-01-01"
        );
        assert_eq!(
            cert(
                CertificateError::NotValidYetContext {
                    time: day(1_700_000_000),
                    not_before: day(1_767_225_600),
                },
                None
            ),
            "the certificate is not valid yet: it starts on 2026-01-01"
        );
        let name = CertificateError::NotValidForNameContext {
            expected: ServerName::try_from("mx.lab.test").unwrap().to_owned(),
            presented: vec![
                "DnsName(\"other.example\")".into(),
                "IpAddress(198.18.0.1)".into(),
            ],
        };
        assert_eq!(
            cert(name, None),
            "the certificate is for other.example, 198.18.0.1, not for mx.lab.test"
        );
    }

    #[test]
    fn an_unknown_issuer_is_told_by_what_was_presented() {
        let own = Presented {
            issuer: Some("CN=mx".into()),
            subject: Some("CN=mx".into()),
            intermediates: 0,
        };
        assert!(cert(CertificateError::UnknownIssuer, Some(&own)).contains("self-signed"));
        let alone = Presented {
            subject: Some("CN=mx".into()),
            issuer: Some("CN=Lab Intermediate".into()),
            intermediates: 0,
        };
        assert!(
            cert(CertificateError::UnknownIssuer, Some(&alone)).contains("missing intermediate")
        );
        let chained = Presented {
            intermediates: 1,
            ..alone
        };
        assert!(cert(CertificateError::UnknownIssuer, Some(&chained))
            .contains("not an authority this host trusts"));
        let ca = CertificateError::Other(rustls::OtherError(std::sync::Arc::new(
            webpki::Error::CaUsedAsEndEntity,
        )));
        assert!(cert(ca, Some(&own)).contains("self-signed"));
    }

    #[test]
    fn protocol_faults_in_plain_words() {
        assert!(words(
            TlsError::AlertReceived(AlertDescription::ProtocolVersion),
            None,
            &[]
        )
        .contains("older than 1.2"));
        assert_eq!(
            words(
                TlsError::AlertReceived(AlertDescription::HandshakeFailure),
                None,
                &[]
            ),
            "the server ended the handshake with the alert \"handshake failure\""
        );
        assert!(words(
            TlsError::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13),
            None,
            &[]
        )
        .contains("older than 1.2"));
        let plain = words(
            TlsError::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            None,
            b"220 mx.lab.test ESMTP Postfix\r\n",
        );
        assert_eq!(
            plain,
            "the server answered in plain text (\"220 mx.lab.test ESMTP Postfix\") on an implicit-TLS port"
        );
        let junk = words(
            TlsError::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            None,
            b"\x00\x01\x02",
        );
        assert_eq!(
            junk,
            "the server's answer on an implicit-TLS port is not TLS"
        );
    }

    #[test]
    fn no_debug_text_in_any_certificate_or_protocol_fault() {
        let faults = [
            TlsError::InvalidCertificate(CertificateError::BadEncoding),
            TlsError::InvalidCertificate(CertificateError::UnhandledCriticalExtension),
            TlsError::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                std::sync::Arc::new(webpki::Error::CaUsedAsEndEntity),
            ))),
            TlsError::AlertReceived(AlertDescription::Unknown(200)),
            TlsError::PeerMisbehaved(rustls::PeerMisbehaved::TooMuchEarlyDataReceived),
            TlsError::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
            TlsError::HandshakeNotComplete,
        ];
        for fault in faults {
            let text = words(fault, None, &[]);
            for debug in ["(", "::", "Other", "Error", "Invalid", "Unknown"] {
                assert!(!text.contains(debug), "{debug} in {text}");
            }
        }
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
    }
}
