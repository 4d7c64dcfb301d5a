//! What the import tests share: the fixture files, a CPU net holding imported
//! weights, and the error measure against a framework's logits.
// Each test binary uses its own subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use alexnet::{Cpu, Model, Network};
use alexnet_interop::Imported;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// The bytes of fixture `name`; a missing one panics, naming what writes it.
pub fn read_fixture(name: &str, written_by: &str) -> Vec<u8> {
    let path = fixtures().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} ({written_by})", path.display()))
}

/// A CPU net of the imported spec for batches of up to `batch`, holding the
/// imported tensors (each of the shape the net expects).
pub fn imported_net(imported: &Imported, batch: usize) -> Network<Cpu> {
    let mut net = Network::new_zeroed(Cpu::new(), &imported.spec, batch).unwrap();
    assert_eq!(net.params().len(), imported.tensors.len());
    for (name, shape, values) in &imported.tensors {
        let index = net
            .param_index(name)
            .unwrap_or_else(|| panic!("{name} not in the net"));
        assert_eq!(&net.params()[index].info.shape, shape, "{name}");
        net.set_param_values(index, values).unwrap();
    }
    net
}

/// max|ours - theirs| / max|theirs| over the whole tensor.
pub fn relative_error(ours: &[f32], theirs: &[f64]) -> f64 {
    assert_eq!(ours.len(), theirs.len());
    let scale = theirs.iter().fold(0f64, |m, v| m.max(v.abs()));
    let diff = ours
        .iter()
        .zip(theirs)
        .fold(0f64, |m, (a, b)| m.max((f64::from(*a) - b).abs()));
    diff / scale
}
