use super::{CertFile, Certificate, Tls, now_unix as now};
use crate::testing::Pki;

#[test]
fn loads_ec_and_rsa_pairs_with_their_names_and_expiry() {
    let pki = Pki::new().unwrap();
    for kind in ["ec", "rsa"] {
        let leaf = pki.issue(30, kind).unwrap();
        let cert = Certificate::load(&leaf.cert, &leaf.key, now()).unwrap();
        assert_eq!(cert.serial, leaf.serial);
        assert!(cert.not_after > now() + 29 * 86_400 && cert.not_after <= now() + 31 * 86_400);
        assert!(cert.matches_host("localhost"));
        assert!(cert.matches_host("LOCALHOST"));
        assert!(cert.matches_host("127.0.0.1"));
        assert!(cert.matches_host("[::1]"));
        assert!(!cert.matches_host("turn.example.com"));
        assert!(!cert.matches_host("10.0.0.1"));
        assert!(Tls::new(&cert).is_ok());
    }
}

#[test]
fn refuses_missing_mismatched_and_expired_files_naming_the_file() {
    let pki = Pki::new().unwrap();
    let a = pki.issue(30, "ec").unwrap();
    let b = pki.issue(30, "ec").unwrap();
    let missing = pki.dir.join("missing.pem");
    let e = Certificate::load(&missing, &a.key, now()).unwrap_err();
    assert_eq!(e.file, CertFile::Certificate);
    assert!(e.problem.contains("missing.pem: cannot read"), "{e}");
    let e = Certificate::load(&a.cert, &missing, now()).unwrap_err();
    assert_eq!(e.file, CertFile::PrivateKey);
    let e = Certificate::load(&a.cert, &b.key, now()).unwrap_err();
    assert_eq!(e.file, CertFile::PrivateKey);
    assert!(
        e.problem.contains("is not the key of the certificate"),
        "{e}"
    );
    // A key where the certificate should be, and the reverse.
    let e = Certificate::load(&a.key, &a.key, now()).unwrap_err();
    assert_eq!(e.file, CertFile::Certificate);
    let e = Certificate::load(&a.cert, &a.cert, now()).unwrap_err();
    assert_eq!(e.file, CertFile::PrivateKey);
    let old = pki.issue(-1, "ec").unwrap();
    let e = Certificate::load(&old.cert, &old.key, now()).unwrap_err();
    assert!(e.problem.contains("expired at"), "{e}");
}

#[test]
fn wildcards_stand_for_one_label() {
    let pki = Pki::new().unwrap();
    let leaf = pki.issue(1, "ec").unwrap();
    let mut cert = Certificate::load(&leaf.cert, &leaf.key, now()).unwrap();
    cert.names = vec!["*.example.com".into()];
    assert!(cert.matches_host("turn.example.com"));
    assert!(!cert.matches_host("example.com"));
    assert!(!cert.matches_host("a.turn.example.com"));
}

#[test]
fn a_swapped_pair_is_what_new_handshakes_get() {
    let pki = Pki::new().unwrap();
    let (a, b) = (pki.issue(5, "ec").unwrap(), pki.issue(9, "rsa").unwrap());
    let (a, b) = (
        Certificate::load(&a.cert, &a.key, now()).unwrap(),
        Certificate::load(&b.cert, &b.key, now()).unwrap(),
    );
    let tls = Tls::new(&a).unwrap();
    assert_eq!(tls.resolver.current.read().unwrap().cert, a.key.cert);
    tls.set(&b);
    let current = tls.resolver.current.read().unwrap();
    assert_eq!(current.cert, b.key.cert);
}

#[test]
fn warns_of_near_expiry_and_of_a_host_it_does_not_name() {
    let pki = Pki::new().unwrap();
    let (soon, later) = (pki.issue(5, "ec").unwrap(), pki.issue(30, "ec").unwrap());
    let soon = Certificate::load(&soon.cert, &soon.key, now()).unwrap();
    let later = Certificate::load(&later.cert, &later.key, now()).unwrap();
    assert!(later.warnings(Some("localhost"), now()).is_empty());
    assert!(later.warnings(None, now()).is_empty());
    let w = soon.warnings(Some("localhost"), now());
    assert!(
        w.len() == 1 && w[0].contains("expires within 14 days"),
        "{w:?}"
    );
    let w = later.warnings(Some("turn.example.com"), now());
    assert!(
        w.len() == 1 && w[0].contains("\"turn.example.com\" is not a name"),
        "{w:?}"
    );
}
