//! Harnesses of larder's fuzz targets (one per file in `fuzz_targets/`), kept out of the
//! targets so that tests/fuzz_regressions.rs can replay an input through the same code
//! on the stable toolchain. `Arbitrary` is derived under `cfg(fuzzing)` only, which
//! cargo-fuzz sets.

pub mod hostile;
pub mod image;
pub mod table;
