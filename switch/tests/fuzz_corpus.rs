//! Replays the corpus of `switch/fuzz` through the fuzz targets' checks, on
//! stable Rust and without libFuzzer.
//!
//! Every file under `fuzz/corpus/<target>/` goes through the same checks the
//! cargo-fuzz target runs (`fuzz/src/lib.rs`): what a campaign found,
//! minimised, and the hand-written seeds. The checks panic on a broken
//! property, so a regression of anything a campaign once reached fails here.

use std::fs;
use std::path::PathBuf;

#[path = "../fuzz/src/lib.rs"]
mod checks;

/// The files of one target's corpus, failing if there are none.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "fuzz", "corpus", target]
        .iter()
        .collect();
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read corpus {}: {err}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).expect("corpus file"))
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 3,
        "corpus {} has {} files",
        dir.display(),
        files.len()
    );
    files
}

/// Runs `check` on every file of `target`'s corpus, naming the file that fails.
fn replay(target: &str, check: fn(&[u8])) {
    for (name, data) in corpus(target) {
        let run = std::panic::catch_unwind(|| check(&data));
        assert!(run.is_ok(), "{target}/{name} fails its checks");
    }
}

#[test]
fn core_frames_corpus() {
    replay("core_frames", checks::core_frames);
}

#[test]
fn sleeve_handshake_corpus() {
    replay("sleeve_handshake", checks::sleeve_handshake);
}

#[test]
fn netpol_yaml_corpus() {
    replay("netpol_yaml", checks::netpol_yaml);
}

#[test]
fn etcd_records_corpus() {
    replay("etcd_records", checks::etcd_records);
}

#[test]
fn kube_objects_corpus() {
    replay("kube_objects", checks::kube_objects);
}

#[test]
fn saved_view_corpus() {
    replay("saved_view", checks::saved_view);
}
