//! One configuration for the crate's property tests.

use proptest::test_runner::{Config, RngSeed};

/// `cases` cases from `seed`, the same on every run (CI), unless the
/// environment asks for more (`PROPTEST_CASES`) or others
/// (`PROPTEST_RNG_SEED`).
pub(crate) fn fixed(cases: u32, seed: u64) -> Config {
    let from_env = Config::default();
    Config {
        cases: if std::env::var_os("PROPTEST_CASES").is_some() {
            from_env.cases
        } else {
            cases
        },
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            from_env.rng_seed
        } else {
            RngSeed::Fixed(seed)
        },
        ..from_env
    }
}
