//! Runs the fuzz targets' checks over the fuzz seed corpus on stable Rust.
//!
//! Every file under `fuzz/corpus/<target>/` goes through the same checks the
//! cargo-fuzz target runs (`fuzz/src/lib.rs`). Seeds named `seed-valid-*`
//! must also parse, and seeds named `seed-invalid-*` must be rejected; other
//! files (what a local fuzzing run added) only must not panic.

use std::fs;
use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod checks;

/// Returns the files of one target's corpus, sorted, failing if there are none.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", target]
        .iter()
        .collect();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read corpus {}: {err}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| (file_name(&path), fs::read(&path).expect("corpus file")))
        .collect();
    files.sort();
    let seeds = files
        .iter()
        .filter(|(name, _)| name.starts_with("seed-"))
        .count();
    assert!(
        seeds >= 3,
        "corpus {} has only {seeds} seeds",
        dir.display()
    );
    files
}

fn file_name(path: &Path) -> String {
    path.file_name().unwrap().to_string_lossy().into_owned()
}

/// Checks the seed's `valid`/`invalid` name against the parser's verdict.
fn check_verdict<E: std::fmt::Debug>(name: &str, result: Result<(), E>) {
    if name.starts_with("seed-valid-") {
        assert!(result.is_ok(), "{name}: {result:?}");
    } else if name.starts_with("seed-invalid-") {
        assert!(result.is_err(), "{name} parsed");
    }
}

#[test]
fn vxlan_corpus() {
    for (name, data) in corpus("vxlan_parse") {
        checks::vxlan_parse(&data);
        check_verdict(&name, weft_encap::vxlan::parse(&data).map(drop));
    }
}

#[test]
fn gso_corpus() {
    for (name, data) in corpus("gso_segment") {
        checks::gso_segment(&data);
        let verdict = weft_encap::virtio::parse(&data)
            .map_err(|err| err.to_string())
            .and_then(|(hdr, frame)| {
                let headroom = usize::from(hdr.hdr_len % 64);
                weft_encap::gso::required_out_len(frame, &hdr, headroom)
                    .map_err(|err| err.to_string())
            });
        check_verdict(&name, verdict.map(drop));
    }
}

#[test]
fn sleeve_corpus() {
    for (name, data) in corpus("sleeve_parse") {
        checks::sleeve_parse(&data);
        check_verdict(&name, weft_encap::sleeve::parse(&data).map(drop));
    }
}

#[test]
fn handshake_corpus() {
    for (name, data) in corpus("handshake_parse") {
        checks::handshake_parse(&data);
        check_verdict(&name, weft_encap::sleeve::handshake::parse(&data).map(drop));
    }
}

#[test]
fn seal_corpus() {
    for (name, data) in corpus("seal_open") {
        checks::seal_open(&data);
        let verdict = data.split_first().ok_or("empty").and_then(|(&pick, d)| {
            let cipher = if pick & 1 == 0 {
                weft_encap::sleeve::seal::Cipher::ChaCha20Poly1305
            } else {
                weft_encap::sleeve::seal::Cipher::Aes256Gcm
            };
            let key = weft_encap::sleeve::seal::SealKey::new(cipher, &checks::SEAL_FUZZ_KEY);
            let mut window = weft_encap::sleeve::seal::ReplayWindow::new();
            weft_encap::sleeve::seal::open(&key, &mut window, &mut d.to_vec())
                .map(drop)
                .map_err(|_| "refused")
        });
        check_verdict(&name, verdict);
    }
}

#[test]
fn nat_corpus() {
    for (name, data) in corpus("nat_rewrite") {
        check_verdict(&name, checks::nat_rewrite(&data));
    }
}

#[test]
fn ipv6_corpus() {
    for (name, data) in corpus("ipv6_parse") {
        checks::ipv6_parse(&data);
        check_verdict(
            &name,
            weft_encap::ipv6::Packet::new_checked(&data[..]).map(drop),
        );
    }
}

#[test]
fn icmpv6_corpus() {
    for (name, data) in corpus("icmpv6_parse") {
        checks::icmpv6_parse(&data);
        let verdict = weft_encap::icmpv6::Packet::new_checked(&data[..])
            .and_then(|p| weft_encap::icmpv6::Repr::parse(&p))
            .map(drop);
        check_verdict(&name, verdict);
    }
}
