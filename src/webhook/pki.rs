//! X.509 for the webhook: making a CA and serving certificates (rcgen), and reading what a
//! Secret holds back into plain facts (x509-parser) that the decisions in
//! [`super::certificate_steps`] work on without touching a certificate.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::{CertificateDer, pem::PemObject};
use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// Life of a CA made here; rotated when a third is left, four months ahead.
pub(crate) const CA_LIFE: Duration = Duration::from_secs(365 * 24 * 60 * 60);
/// Life of a serving certificate made here; renewed when ten days are left.
pub(crate) const SERVING_LIFE: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Certificates made here start this long before they are made, so an API server whose
/// clock is a little behind ours already finds them valid.
pub(crate) const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate in DER, which is also how certificates are told apart.
pub(crate) type Der = Vec<u8>;

/// Why stored material cannot be used.
pub(crate) type Flaw = &'static str;

/// The PEM texts the webhook's Secret holds under its five keys (empty when absent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Material {
    pub ca_crt: Vec<u8>,
    pub ca_key: Vec<u8>,
    pub tls_crt: Vec<u8>,
    pub tls_key: Vec<u8>,
    pub ca_bundle: Vec<u8>,
}

/// The names a serving certificate must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// The names the API server uses for `service` in `namespace`, and `ips`.
    pub(crate) fn of_service(service: &str, namespace: &str, ips: &[IpAddr]) -> Self {
        let svc = format!("{service}.{namespace}.svc");
        Self {
            dns: vec![format!("{svc}.cluster.local"), svc],
            ips: ips.to_vec(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    pub(crate) fn contains(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// When two thirds of its life have passed: from then on it is replaced.
    pub(crate) fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }

    /// When it was made, for a certificate made here.
    pub(crate) fn issued_at(&self) -> SystemTime {
        self.not_before + BACKDATE
    }
}

/// A usable CA: its certificate parses, is a CA, and `ca.key` is its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CaFacts {
    pub der: Der,
    pub validity: Validity,
}

/// A serving certificate whose key is `tls.key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ServingFacts {
    pub validity: Validity,
    pub names: Names,
    /// The CA of the bundle whose key signed it, if any.
    pub signer: Option<Der>,
}

/// What the Secret holds, as far as the decisions care.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Stored {
    pub ca: Result<CaFacts, Flaw>,
    pub serving: Result<ServingFacts, Flaw>,
    /// The CAs of `ca-bundle.crt`, newest first; entries that do not parse are left out.
    pub bundle: Vec<Der>,
}

/// Reads `material`; never fails, naming what is unusable instead.
pub(crate) fn read(material: &Material) -> Stored {
    let bundle = pem_certificates(&material.ca_bundle)
        .into_iter()
        .filter(|der| X509Certificate::from_der(der).is_ok())
        .collect::<Vec<_>>();
    Stored {
        ca: read_ca(material),
        serving: read_serving(material, &bundle),
        bundle,
    }
}

fn read_ca(material: &Material) -> Result<CaFacts, Flaw> {
    let der = first_certificate(&material.ca_crt).ok_or("ca.crt holds no certificate")?;
    let (_, certificate) = X509Certificate::from_der(&der).map_err(|_| "ca.crt does not parse")?;
    if !certificate.is_ca() {
        return Err("ca.crt is not a CA certificate");
    }
    let key = key_pair(&material.ca_key).ok_or("ca.key is not a usable private key")?;
    if !key_matches(&key, &certificate) {
        return Err("ca.key is not the key of ca.crt");
    }
    let validity = validity(&certificate).ok_or("ca.crt has dates out of range")?;
    Ok(CaFacts {
        der: der.clone(),
        validity,
    })
}

fn read_serving(material: &Material, bundle: &[Der]) -> Result<ServingFacts, Flaw> {
    let der = first_certificate(&material.tls_crt).ok_or("tls.crt holds no certificate")?;
    let (_, certificate) = X509Certificate::from_der(&der).map_err(|_| "tls.crt does not parse")?;
    let key = key_pair(&material.tls_key).ok_or("tls.key is not a usable private key")?;
    if !key_matches(&key, &certificate) {
        return Err("tls.key is not the key of tls.crt");
    }
    let validity = validity(&certificate).ok_or("tls.crt has dates out of range")?;
    let signer = bundle.iter().find(|ca_der| {
        X509Certificate::from_der(ca_der)
            .is_ok_and(|(_, ca)| certificate.verify_signature(Some(ca.public_key())).is_ok())
    });
    Ok(ServingFacts {
        validity,
        names: names_in(&certificate),
        signer: signer.cloned(),
    })
}

/// Every certificate of a PEM text, as DER; what is not a certificate is skipped.
pub(crate) fn pem_certificates(pem: &[u8]) -> Vec<Der> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|der| der.to_vec())
        .collect()
}

fn first_certificate(pem: &[u8]) -> Option<Der> {
    pem_certificates(pem).into_iter().next()
}

/// PEM texts of certificates given in DER, one after another.
pub(crate) fn pem_of(certificates: &[Der]) -> Vec<u8> {
    let pems: Vec<pem::Pem> = certificates
        .iter()
        .map(|der| pem::Pem::new("CERTIFICATE", der.clone()))
        .collect();
    let unix = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_many_config(&pems, unix).into_bytes()
}

fn key_pair(pem: &[u8]) -> Option<KeyPair> {
    KeyPair::from_pem(std::str::from_utf8(pem).ok()?).ok()
}

fn key_matches(key: &KeyPair, certificate: &X509Certificate<'_>) -> bool {
    use rcgen::PublicKeyData;
    key.der_bytes() == certificate.public_key().subject_public_key.data.as_ref()
}

fn validity(certificate: &X509Certificate<'_>) -> Option<Validity> {
    let at =
        |seconds: i64| UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(seconds).ok()?));
    let validity = certificate.validity();
    Some(Validity {
        not_before: at(validity.not_before.timestamp())?,
        not_after: at(validity.not_after.timestamp())?,
    })
}

fn names_in(certificate: &X509Certificate<'_>) -> Names {
    let mut names = Names {
        dns: Vec::new(),
        ips: Vec::new(),
    };
    let Ok(Some(extension)) = certificate.subject_alternative_name() else {
        return names;
    };
    for name in &extension.value.general_names {
        match name {
            GeneralName::DNSName(dns) => names.dns.push(dns.to_ascii_lowercase()),
            GeneralName::IPAddress(bytes) => {
                let ip = match bytes.len() {
                    4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                    16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                    _ => None,
                };
                names.ips.extend(ip);
            }
            _ => {}
        }
    }
    names
}

/// A new CA, valid from now for [`CA_LIFE`]: its certificate and key in PEM.
pub(crate) fn new_ca(now: SystemTime) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    // The time in the name tells CAs apart in a bundle and in logs.
    let made = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("mail-incident-operator webhook CA {made}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_LIFE);
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// A serving certificate for `names`, signed by the CA `ca_crt`/`ca_key`, valid from now
/// for [`SERVING_LIFE`] or until the CA ends, whichever is sooner: its certificate and key.
pub(crate) fn new_serving(
    ca_crt: &[u8],
    ca_key: &[u8],
    names: &Names,
    now: SystemTime,
) -> Result<(String, String), rcgen::Error> {
    let ca_der = first_certificate(ca_crt).ok_or(rcgen::Error::CouldNotParseCertificate)?;
    let ca_end = X509Certificate::from_der(&ca_der)
        .ok()
        .and_then(|(_, ca)| validity(&ca))
        .ok_or(rcgen::Error::CouldNotParseCertificate)?
        .not_after;
    let signing_key = key_pair(ca_key).ok_or(rcgen::Error::CouldNotParseKeyPair)?;
    let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(ca_der), signing_key)?;

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(first) = names.dns.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.subject_alt_names = names
        .dns
        .iter()
        .map(|dns| Ok(SanType::DnsName(dns.as_str().try_into()?)))
        .chain(names.ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let life = ca_end
        .duration_since(now)
        .unwrap_or_default()
        .min(SERVING_LIFE);
    set_validity(&mut params, now, life);
    let certificate = params.signed_by(&key, &issuer)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

fn set_validity(params: &mut CertificateParams, now: SystemTime, life: Duration) {
    params.not_before = (now - BACKDATE).into();
    params.not_after = (now + life).into();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    pub(crate) const NOW: Duration = Duration::from_secs(1_800_000_000);

    pub(crate) fn now() -> SystemTime {
        UNIX_EPOCH + NOW
    }

    pub(crate) fn names() -> Names {
        Names::of_service("hook", "ops", &["127.0.0.1".parse().unwrap()])
    }

    /// A Secret's worth of material as the keeper first writes it.
    pub(crate) fn fresh_material(now: SystemTime) -> Material {
        let (ca_crt, ca_key) = new_ca(now).unwrap();
        let (tls_crt, tls_key) =
            new_serving(ca_crt.as_bytes(), ca_key.as_bytes(), &names(), now).unwrap();
        Material {
            ca_bundle: ca_crt.clone().into_bytes(),
            ca_crt: ca_crt.into_bytes(),
            ca_key: ca_key.into_bytes(),
            tls_crt: tls_crt.into_bytes(),
            tls_key: tls_key.into_bytes(),
        }
    }

    #[test]
    fn a_service_is_named_as_the_api_server_calls_it() {
        let names = Names::of_service("hook", "ops", &[]);
        assert_eq!(
            names.dns,
            ["hook.ops.svc.cluster.local", "hook.ops.svc"].map(String::from)
        );
    }

    #[test]
    fn fresh_material_reads_back_as_made() {
        let material = fresh_material(now());
        let stored = read(&material);
        let ca = stored.ca.expect("a usable CA");
        assert_eq!(ca.validity.not_before, now() - BACKDATE);
        assert_eq!(ca.validity.not_after, now() + CA_LIFE);
        assert_eq!(stored.bundle, vec![ca.der.clone()]);
        let serving = stored.serving.expect("a usable serving certificate");
        assert_eq!(serving.names, names());
        assert_eq!(serving.signer, Some(ca.der));
        assert_eq!(serving.validity.not_after, now() + SERVING_LIFE);
        assert_eq!(serving.validity.issued_at(), now());
    }

    #[test]
    fn a_serving_certificate_ends_no_later_than_its_ca() {
        let (ca_crt, ca_key) = new_ca(now()).unwrap();
        let later = now() + CA_LIFE - 3 * DAY;
        let (tls_crt, tls_key) =
            new_serving(ca_crt.as_bytes(), ca_key.as_bytes(), &names(), later).unwrap();
        let stored = read(&Material {
            tls_crt: tls_crt.into_bytes(),
            tls_key: tls_key.into_bytes(),
            ..Material::default()
        });
        assert_eq!(stored.serving.unwrap().validity.not_after, now() + CA_LIFE);
    }

    #[test]
    fn garbage_and_mismatched_keys_are_named_not_fatal() {
        let material = fresh_material(now());
        let other = fresh_material(now());
        let garbage = Material {
            ca_crt: b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
                .to_vec(),
            ca_key: vec![0xff; 40],
            tls_crt: material.tls_crt.clone(),
            tls_key: other.tls_key.clone(),
            ca_bundle: b"junk".to_vec(),
        };
        let stored = read(&garbage);
        assert_eq!(stored.ca, Err("ca.crt holds no certificate"));
        assert_eq!(stored.serving, Err("tls.key is not the key of tls.crt"));
        assert!(stored.bundle.is_empty());

        let swapped_key = Material {
            ca_key: other.ca_key,
            ..material
        };
        assert_eq!(
            read(&swapped_key).ca,
            Err("ca.key is not the key of ca.crt")
        );
    }

    #[test]
    fn a_serving_certificate_knows_which_ca_of_the_bundle_signed_it() {
        let old = fresh_material(now());
        let new = fresh_material(now());
        let bundle = [pem_certificates(&new.ca_crt), pem_certificates(&old.ca_crt)].concat();
        let rotating = Material {
            ca_bundle: pem_of(&bundle),
            ..old.clone()
        };
        let stored = read(&rotating);
        assert_eq!(stored.bundle, bundle);
        assert_eq!(stored.serving.unwrap().signer, Some(bundle[1].clone()));

        let foreign = Material {
            ca_bundle: new.ca_crt,
            ..old
        };
        assert_eq!(read(&foreign).serving.unwrap().signer, None);
    }
}
