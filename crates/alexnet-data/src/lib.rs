//! # alexnet-data
//!
//! Datasets for the `alexnet` engine: preparing photo folders and the small
//! image sets into prepared datasets, and loading them with the paper's
//! augmentation. This crate is not written yet: it holds the place the data
//! pipeline takes in the workspace, so the dependency direction
//! (`alexnet-cli` → `alexnet-data` → nothing of the engine's internals) is fixed
//! from the start.
