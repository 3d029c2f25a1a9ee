//! A test CA and a server certificate it signed, made at test time (rcgen), for NTS.

use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Writes ca.pem, server.pem (for `address`, an IP address or a name) and server.key in `dir`.
pub fn make_certificates(dir: &Path, address: &str) {
    let named = |names: Vec<String>, name: &str| {
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, name);
        params
    };
    let mut ca = named(Vec::new(), "ntpx test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("a key"))
        .expect("the CA's certificate");
    let server_key = KeyPair::generate().expect("a key");
    let server = named(vec![address.to_owned()], "ntpx test server")
        .signed_by(&server_key, &ca)
        .expect("the server's certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("writing ca.pem");
    std::fs::write(dir.join("server.pem"), server.pem()).expect("writing server.pem");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("writing server.key");
}
