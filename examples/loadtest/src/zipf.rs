//! Zipf-distributed ranks: which room a simulated user opens.
//! A few rooms take most of the traffic, as in a real chat, and the rest form a long tail.

use std::fmt;

/// Samples ranks `0..n` with probability proportional to `1 / (rank + 1)^exponent`.
///
/// The cumulative distribution is computed once; each sample is one uniform draw and a binary search.
///
/// ```
/// use chat_loadtest::Zipf;
///
/// let zipf = Zipf::new(100, 1.0).unwrap();
/// let mut rng = fastrand::Rng::with_seed(7);
/// let rank = zipf.sample(&mut rng);
/// assert!(rank < 100);
/// ```
#[derive(Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl fmt::Debug for Zipf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zipf").field("n", &self.cdf.len()).finish()
    }
}

impl Zipf {
    /// A sampler over `n` ranks; `None` when `n` is 0 or `exponent` is negative or not finite.
    pub fn new(n: usize, exponent: f64) -> Option<Self> {
        if n == 0 || !exponent.is_finite() || exponent < 0.0 {
            return None;
        }
        let mut cdf = Vec::with_capacity(n);
        let mut total = 0.0;
        for rank in 0..n {
            total += 1.0 / ((rank + 1) as f64).powf(exponent);
            cdf.push(total);
        }
        for value in &mut cdf {
            *value /= total;
        }
        Some(Self { cdf })
    }

    /// Number of ranks.
    pub fn len(&self) -> usize {
        self.cdf.len()
    }

    /// Always false: a sampler has at least one rank.
    pub fn is_empty(&self) -> bool {
        self.cdf.is_empty()
    }

    /// Probability of `rank`, 0 for ranks out of range.
    pub fn probability(&self, rank: usize) -> f64 {
        match rank {
            0 => self.cdf.first().copied().unwrap_or(0.0),
            r if r < self.cdf.len() => self.cdf[r] - self.cdf[r - 1],
            _ => 0.0,
        }
    }

    /// One rank in `0..n`, rank 0 the most popular.
    pub fn sample(&self, rng: &mut fastrand::Rng) -> usize {
        let u = rng.f64();
        // The first rank whose cumulative probability exceeds u; rounding can leave the last
        // value a hair under 1, so the index is clamped.
        let index = self.cdf.partition_point(|&c| c <= u);
        index.min(self.cdf.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_bad_exponents() {
        assert!(Zipf::new(0, 1.0).is_none());
        assert!(Zipf::new(3, -0.5).is_none());
        assert!(Zipf::new(3, f64::NAN).is_none());
    }

    #[test]
    fn probabilities_follow_the_power_law_and_sum_to_one() {
        let Some(zipf) = Zipf::new(4, 1.0) else {
            panic!("valid parameters")
        };
        let h = 1.0 + 0.5 + 1.0 / 3.0 + 0.25;
        for rank in 0..4 {
            let expected = 1.0 / (rank as f64 + 1.0) / h;
            assert!(
                (zipf.probability(rank) - expected).abs() < 1e-12,
                "rank {rank}"
            );
        }
        let sum: f64 = (0..4).map(|r| zipf.probability(r)).sum();
        assert!((sum - 1.0).abs() < 1e-12);
        assert_eq!(zipf.probability(4), 0.0);
    }

    #[test]
    fn exponent_zero_is_uniform() {
        let Some(zipf) = Zipf::new(5, 0.0) else {
            panic!("valid parameters")
        };
        for rank in 0..5 {
            assert!((zipf.probability(rank) - 0.2).abs() < 1e-12);
        }
    }

    #[test]
    fn samples_match_the_distribution() {
        let Some(zipf) = Zipf::new(50, 1.1) else {
            panic!("valid parameters")
        };
        let mut rng = fastrand::Rng::with_seed(42);
        let draws = 200_000;
        let mut counts = [0u32; 50];
        for _ in 0..draws {
            counts[zipf.sample(&mut rng)] += 1;
        }
        for rank in [0, 1, 2, 10, 49] {
            let observed = f64::from(counts[rank]) / f64::from(draws);
            let expected = zipf.probability(rank);
            // Five standard deviations of a binomial proportion: fails only on a real bias.
            let sigma = (expected * (1.0 - expected) / f64::from(draws)).sqrt();
            assert!(
                (observed - expected).abs() < 5.0 * sigma + 1e-4,
                "rank {rank}: observed {observed}, expected {expected}"
            );
        }
        assert!(counts[0] > counts[1] && counts[1] > counts[10]);
    }

    #[test]
    fn one_rank_always_samples_zero() {
        let Some(zipf) = Zipf::new(1, 2.0) else {
            panic!("valid parameters")
        };
        let mut rng = fastrand::Rng::with_seed(1);
        assert!((0..100).all(|_| zipf.sample(&mut rng) == 0));
    }
}
