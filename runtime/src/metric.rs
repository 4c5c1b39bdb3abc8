//! Metric learning: the triplet loss with its triplets mined in the batch (the loss kernels of
//! every backend call it), identity batches for mining (P identities × K examples), and how a
//! verification model is measured: distances of same and different pairs, ROC AUC, accuracy at
//! the best threshold, TAR at a fixed FAR, and one-shot identification.

use cnnc_compiler::ir::op::TripletLoss;
use rand::seq::SliceRandom;
use rand::SeedableRng;

/// `‖a − b‖²`, summed in f64.
pub fn squared_distance(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x - y) * f64::from(x - y)).sum::<f64>() as f32
}

/// `‖a − b‖`.
pub fn distance(a: &[f32], b: &[f32]) -> f32 {
    squared_distance(a, b).sqrt()
}

/// The triplets of anchor `i`: `(positive, negative, weight)`, each weighed in its loss.
fn triplets(t: &TripletLoss, dist: &[f32], n: usize, labels: &[usize], i: usize) -> Vec<(usize, usize, f32)> {
    let row = &dist[i * n..(i + 1) * n];
    let positives: Vec<usize> = (0..n).filter(|&j| j != i && labels[j] == labels[i]).collect();
    let negatives: Vec<usize> = (0..n).filter(|&j| labels[j] != labels[i]).collect();
    if positives.is_empty() || negatives.is_empty() {
        return Vec::new();
    }
    // The first of equals (`min_by` keeps it), so that ties break the same way everywhere.
    let nearest = |set: &mut dyn Iterator<Item = usize>| set.min_by(|&a, &b| row[a].total_cmp(&row[b]));
    let farthest = |set: &mut dyn Iterator<Item = usize>| set.min_by(|&a, &b| row[b].total_cmp(&row[a]));
    if !t.semi_hard {
        let p = farthest(&mut positives.iter().copied()).unwrap_or(i);
        let q = nearest(&mut negatives.iter().copied()).unwrap_or(i);
        return vec![(p, q, 1.0)];
    }
    // FaceNet's semi-hard negatives: for every positive, the nearest negative farther than it;
    // where there is none, the farthest negative. The anchor's loss is their mean.
    let weight = 1.0 / positives.len() as f32;
    positives
        .iter()
        .map(|&p| {
            let farther = nearest(&mut negatives.iter().copied().filter(|&q| row[q] > row[p]));
            let q = farther.or_else(|| farthest(&mut negatives.iter().copied())).unwrap_or(i);
            (p, q, weight)
        })
        .collect()
}

fn distances(emb: &[f32], d: usize, n: usize) -> Vec<f32> {
    let mut dist = vec![0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            dist[i * n + j] = squared_distance(&emb[i * d..(i + 1) * d], &emb[j * d..(j + 1) * d]);
        }
    }
    dist
}

/// Each anchor's loss over the batch `emb` `[n, d]` of identities `labels`.
pub fn triplet_losses(t: &TripletLoss, emb: &[f32], d: usize, labels: &[usize]) -> Vec<f32> {
    let n = labels.len();
    let dist = distances(emb, d, n);
    (0..n)
        .map(|i| {
            triplets(t, &dist, n, labels, i)
                .iter()
                .map(|&(p, q, w)| w * (dist[i * n + p] - dist[i * n + q] + t.margin).max(0.0))
                .sum()
        })
        .collect()
}

/// The gradient of `scale · Σ` of the anchors' losses with respect to `emb`, into `grad`. The
/// triplets are held fixed (mining picks them; it is not differentiated), as every
/// implementation does.
pub fn triplet_grad(t: &TripletLoss, emb: &[f32], d: usize, labels: &[usize], scale: f32, grad: &mut [f32]) {
    let n = labels.len();
    let dist = distances(emb, d, n);
    grad[..n * d].fill(0.0);
    let row = |k: usize| &emb[k * d..(k + 1) * d];
    for i in 0..n {
        for (p, q, w) in triplets(t, &dist, n, labels, i) {
            if dist[i * n + p] - dist[i * n + q] + t.margin <= 0.0 {
                continue;
            }
            let c = 2.0 * w * scale;
            for k in 0..d {
                let (a, pos, neg) = (row(i)[k], row(p)[k], row(q)[k]);
                // ∂/∂a (‖a − p‖² − ‖a − n‖²) = 2(n − p); ∂/∂p = −2(a − p); ∂/∂n = 2(a − n).
                grad[i * d + k] += c * (neg - pos);
                grad[p * d + k] -= c * (a - pos);
                grad[q * d + k] += c * (a - neg);
            }
        }
    }
}

/// Each identity's examples, in label order (labels may be sparse and large).
fn by_label(labels: &[usize]) -> std::collections::BTreeMap<usize, Vec<usize>> {
    let mut by: std::collections::BTreeMap<usize, Vec<usize>> = std::collections::BTreeMap::new();
    for (i, &l) in labels.iter().enumerate() {
        by.entry(l).or_default().push(i);
    }
    by
}

/// The loss of one given triplet, `row` = `[a | p | n]`: `max(‖a − p‖² − ‖a − n‖² + margin, 0)`.
pub fn given_triplet_loss(row: &[f32], margin: f32) -> f32 {
    let d = row.len() / 3;
    let (a, p, n) = (&row[..d], &row[d..2 * d], &row[2 * d..3 * d]);
    (squared_distance(a, p) - squared_distance(a, n) + margin).max(0.0)
}

/// The gradient of `scale` times [`given_triplet_loss`] with respect to `row`, into `grad`.
pub fn given_triplet_grad(row: &[f32], margin: f32, scale: f32, grad: &mut [f32]) {
    let d = row.len() / 3;
    grad.fill(0.0);
    if given_triplet_loss(row, margin) <= 0.0 {
        return;
    }
    let c = 2.0 * scale;
    for k in 0..d {
        let (a, pos, neg) = (row[k], row[d + k], row[2 * d + k]);
        grad[k] = c * (neg - pos);
        grad[d + k] = -c * (a - pos);
        grad[2 * d + k] = c * (a - neg);
    }
}

/// An epoch's tuples for a model of several inputs ([`FeedKind`]), flat: `arity` example
/// indices a tuple, every example an anchor once, in a shuffled order. A pair's second is, half
/// the time, another example of the anchor's identity, else one of another identity; a triplet
/// has both. An identity of one example is its own positive (its copies are augmented apart),
/// except for pairs when `distinct` (evaluation, which does not augment: the pair would be one
/// image twice), where its pair is always of two identities. Depends only on (seed, epoch).
///
/// [`FeedKind`]: cnnc_compiler::train::FeedKind
pub fn tuples(
    labels: &[usize],
    kind: cnnc_compiler::train::FeedKind,
    seed: u64,
    epoch: usize,
    distinct: bool,
) -> Vec<usize> {
    use cnnc_compiler::train::FeedKind;
    use rand::RngExt;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x0070_91e5 ^ ((epoch as u64) << 32));
    let by_label = by_label(labels);
    let n = labels.len();
    let mut anchors: Vec<usize> = (0..n).collect();
    anchors.shuffle(&mut rng);
    let positive = |rng: &mut rand_chacha::ChaCha8Rng, i: usize| {
        let same = &by_label[&labels[i]];
        if same.len() == 1 {
            return i;
        }
        // Another example of the identity: one of the others, uniformly.
        let k = rng.random_range(0..same.len() - 1);
        let j = same[k];
        if j == i {
            same[same.len() - 1]
        } else {
            j
        }
    };
    // Another identity's example, uniformly over the examples of other identities (rejection;
    // `None` when every example shares one identity).
    let negative = |rng: &mut rand_chacha::ChaCha8Rng, i: usize| {
        if by_label.len() < 2 {
            return None;
        }
        loop {
            let j = rng.random_range(0..n);
            if labels[j] != labels[i] {
                return Some(j);
            }
        }
    };
    let mut order = Vec::with_capacity(n * kind.arity());
    for i in anchors {
        match kind {
            FeedKind::Pairs => {
                let alone = distinct && by_label[&labels[i]].len() == 1;
                let j =
                    if rng.random_bool(0.5) && !alone { Some(positive(&mut rng, i)) } else { negative(&mut rng, i) };
                order.extend([i, j.unwrap_or_else(|| positive(&mut rng, i))]);
            }
            FeedKind::Triplets => {
                let p = positive(&mut rng, i);
                order.extend([i, p, negative(&mut rng, i).unwrap_or(p)]);
            }
        }
    }
    order
}

/// An epoch's order of examples in batches of `per` examples of each of `batch / per`
/// identities (online mining needs positives in every batch). Each identity's examples are
/// shuffled and dealt `per` at a time; identities whose turn comes are drawn at random among
/// those with examples left, and one with fewer than `per` left is topped up with its own
/// examples again. The order depends only on (seed, epoch); it holds about one epoch of examples.
pub fn identity_order(labels: &[usize], batch: usize, per: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x005e_ed1d ^ ((epoch as u64) << 32));
    // By identity, in label order (labels may be sparse and large).
    let by_label = by_label(labels);
    let mut pools: Vec<Vec<usize>> = by_label.into_values().collect();
    for p in &mut pools {
        p.shuffle(&mut rng);
    }
    let per = per.max(1);
    let identities = (batch / per).clamp(1, pools.len().max(1));
    let mut next: Vec<usize> = vec![0; pools.len()];
    let mut order = Vec::with_capacity(labels.len() + batch);
    while order.len() < labels.len() {
        // Identities with examples left first, at random; then any, to fill the batch.
        let mut left: Vec<usize> = (0..pools.len()).filter(|&c| next[c] < pools[c].len()).collect();
        left.shuffle(&mut rng);
        if left.len() < identities {
            let mut rest: Vec<usize> = (0..pools.len()).filter(|c| !left.contains(c)).collect();
            rest.shuffle(&mut rng);
            left.extend(rest);
        }
        for &c in left.iter().take(identities) {
            let pool = &pools[c];
            for _ in 0..per {
                order.push(pool[next[c] % pool.len()]);
                next[c] += 1;
            }
        }
    }
    order
}

/// How a split's embeddings tell its identities apart.
#[derive(Clone, Debug)]
pub struct Verified {
    /// [`verification`] of every pair (`None` without both kinds of pair).
    pub verification: Option<Verification>,
    /// The share [`one_shot`] named right, and how many examples it named.
    pub one_shot: (f64, usize),
    /// Every pair's distance, and whether it is a same pair.
    pub pairs: Vec<(f32, bool)>,
}

/// How well distances tell same from different pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Verification {
    /// Same-identity pairs.
    pub same: usize,
    /// Different-identity pairs.
    pub different: usize,
    /// Area under the ROC curve (same pairs closer than different ones; ties count half).
    pub auc: f64,
    /// The best accuracy of `distance < threshold`, same and different pairs weighing alike.
    pub accuracy: f64,
    /// The threshold that gives it (the midpoint between two neighbouring distances).
    pub threshold: f32,
    /// `(FAR, TAR)`: the share of same pairs accepted at the threshold that accepts at most this
    /// share of different pairs, for FAR 10⁻³ and 10⁻².
    pub tar: Vec<(f64, f64)>,
}

/// Every pair of distinct examples of `emb` `[n, d]`: its distance and whether it is a same pair.
pub fn pairs(emb: &[f32], d: usize, labels: &[usize]) -> Vec<(f32, bool)> {
    let n = labels.len();
    let mut out = Vec::with_capacity(n * n.saturating_sub(1) / 2);
    for i in 0..n {
        for j in i + 1..n {
            let dist = distance(&emb[i * d..(i + 1) * d], &emb[j * d..(j + 1) * d]);
            out.push((dist, labels[i] == labels[j]));
        }
    }
    out
}

/// ROC AUC, the best balanced accuracy and its threshold, and TAR at FAR 10⁻³ and 10⁻², of
/// `pairs` (distance, same?). `None` without both kinds of pair.
pub fn verification(pairs: &[(f32, bool)]) -> Option<Verification> {
    let same = pairs.iter().filter(|p| p.1).count();
    let different = pairs.len() - same;
    if same == 0 || different == 0 {
        return None;
    }
    let mut sorted: Vec<(f32, bool)> = pairs.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sweep thresholds upward: everything at or below a distance is accepted.
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut auc = 0.0;
    let mut best = (0.5, sorted[0].0 - 1.0);
    let mut tar = vec![(1e-3, 0.0), (1e-2, 0.0)];
    let mut k = 0;
    while k < sorted.len() {
        // A run of equal distances moves together (ties count half in the AUC).
        let start = k;
        let (mut run_tp, mut run_fp) = (0, 0);
        while k < sorted.len() && sorted[k].0 == sorted[start].0 {
            if sorted[k].1 {
                run_tp += 1;
            } else {
                run_fp += 1;
            }
            k += 1;
        }
        auc += run_fp as f64 * (tp as f64 + run_tp as f64 / 2.0);
        tp += run_tp;
        fp += run_fp;
        let (tpr, fpr) = (tp as f64 / same as f64, fp as f64 / different as f64);
        let accuracy = (tpr + 1.0 - fpr) / 2.0;
        if accuracy > best.0 {
            let above = sorted.get(k).map_or(sorted[start].0 + 1.0, |p| p.0);
            best = (accuracy, (sorted[start].0 + above) / 2.0);
        }
        for (far, rate) in &mut tar {
            if fpr <= *far {
                *rate = tpr;
            }
        }
    }
    // AUC: the chance that a random different pair is farther than a random same pair (each
    // different pair counted the same pairs below it, ties half).
    let auc = auc / (same as f64 * different as f64);
    Some(Verification { same, different, auc, accuracy: best.0, threshold: best.1, tar })
}

/// One-shot identification: each identity's first example (in order) is enrolled, every other
/// example is named by its nearest enrolled one; the share named right, and how many were asked.
pub fn one_shot(emb: &[f32], d: usize, labels: &[usize]) -> (f64, usize) {
    let mut enrolled: Vec<(usize, usize)> = Vec::new();
    for (i, &l) in labels.iter().enumerate() {
        if !enrolled.iter().any(|&(c, _)| c == l) {
            enrolled.push((l, i));
        }
    }
    let row = |k: usize| &emb[k * d..(k + 1) * d];
    let (mut right, mut asked) = (0, 0);
    for (i, &l) in labels.iter().enumerate() {
        if enrolled.iter().any(|&(_, e)| e == i) {
            continue;
        }
        let named = enrolled
            .iter()
            .map(|&(c, e)| (c, squared_distance(row(i), row(e))))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(c, _)| c);
        asked += 1;
        right += usize::from(named == Some(l));
    }
    (if asked == 0 { f64::NAN } else { right as f64 / asked as f64 }, asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_and_accuracy_of_separated_and_mixed_pairs() {
        let v = verification(&[(0.1, true), (0.2, true), (0.3, false), (0.4, false)]).unwrap();
        assert_eq!((v.auc, v.accuracy, v.threshold), (1.0, 1.0, 0.25));
        // One different pair closer than one same pair: 3 of 4 orderings right.
        let v = verification(&[(0.1, true), (0.3, true), (0.2, false), (0.4, false)]).unwrap();
        assert!((v.auc - 0.75).abs() < 1e-12, "{v:?}");
        assert!((v.accuracy - 0.75).abs() < 1e-12, "{v:?}");
        // Ties count half.
        let v = verification(&[(0.5, true), (0.5, false)]).unwrap();
        assert!((v.auc - 0.5).abs() < 1e-12, "{v:?}");
        assert!(verification(&[(0.1, true)]).is_none());
    }

    #[test]
    fn auc_is_the_share_of_ordered_pairs() {
        // Brute force over every (same, different) couple.
        let pairs: Vec<(f32, bool)> = (0..40).map(|i| (((i * 37) % 23) as f32 / 7.0, i % 3 == 0)).collect();
        type Pairs<'a> = Vec<&'a (f32, bool)>;
        let (same, diff): (Pairs, Pairs) = pairs.iter().partition(|p| p.1);
        let mut wins = 0.0;
        for s in &same {
            for d in &diff {
                wins += if s.0 < d.0 {
                    1.0
                } else if s.0 == d.0 {
                    0.5
                } else {
                    0.0
                };
            }
        }
        let v = verification(&pairs).unwrap();
        assert!((v.auc - wins / (same.len() * diff.len()) as f64).abs() < 1e-12);
    }

    /// TAR at a FAR: the most same pairs any threshold accepts (everything at or below one of the
    /// distances, or nothing) while accepting at most that share of different pairs; brute force
    /// over every threshold, on 1,000 different pairs so that FAR 10⁻³ allows exactly one.
    #[test]
    fn tar_is_the_best_acceptance_within_the_false_accept_rate() {
        let mut pairs: Vec<(f32, bool)> = (0..1000).map(|i| (((i * 7919) % 1009) as f32 / 100.0, false)).collect();
        pairs.extend((0..200).map(|i| (((i * 31) % 211) as f32 / 40.0, true)));
        let v = verification(&pairs).unwrap();
        let rates = |t: f32| {
            let accepted = |same: bool| pairs.iter().filter(|p| p.1 == same && p.0 <= t).count() as f64;
            (accepted(true) / 200.0, accepted(false) / 1000.0)
        };
        for &(far, tar) in &v.tar {
            let best =
                pairs.iter().map(|p| rates(p.0)).filter(|&(_, fpr)| fpr <= far).map(|(tpr, _)| tpr).fold(0.0, f64::max);
            assert!((tar - best).abs() < 1e-12, "FAR {far}: {tar} against {best}");
            assert!(best > 0.0 && best < 1.0, "a case that tells thresholds apart: {best}");
        }
        assert_eq!(v.tar.iter().map(|t| t.0).collect::<Vec<_>>(), [1e-3, 1e-2]);
    }

    #[test]
    fn identity_batches_hold_each_identity_per_times() {
        let labels: Vec<usize> = (0..100).map(|i| i % 7).collect();
        let order = identity_order(&labels, 12, 4, 1, 0);
        assert!(order.len() >= 100 && order.len().is_multiple_of(12));
        for batch in order.chunks(12) {
            for group in batch.chunks(4) {
                assert!(group.iter().all(|&i| labels[i] == labels[group[0]]), "{batch:?}");
            }
            let ids: std::collections::BTreeSet<usize> = batch.iter().map(|&i| labels[i]).collect();
            assert_eq!(ids.len(), 3, "three identities a batch");
        }
        assert_eq!(order, identity_order(&labels, 12, 4, 1, 0));
        assert_ne!(order, identity_order(&labels, 12, 4, 1, 1));
    }

    #[test]
    fn one_shot_names_by_the_nearest_enrolled_example() {
        let emb = [0.0, 0.0, 10.0, 10.0, 0.5, 0.0, 9.0, 10.0, 1.0, 1.0];
        let labels = [0, 1, 0, 1, 1];
        // Enrolled: 0 (id 0) and 1 (id 1); 2 → id 0 right, 3 → id 1 right, 4 → id 0 wrong.
        let (accuracy, asked) = one_shot(&emb, 2, &labels);
        assert_eq!(asked, 3);
        assert!((accuracy - 2.0 / 3.0).abs() < 1e-12);
    }
}

#[cfg(test)]
mod gradient {
    use super::*;

    /// The gradient of Σ losses against central differences, per coordinate.
    #[test]
    fn triplet_grad_is_the_loss_s_derivative() {
        let labels = [0, 1, 2, 0, 1, 2, 0];
        let d = 3;
        // Irregular values: a grid of values makes equal distances, where mining's choice (and
        // the derivative) jumps.
        let emb: Vec<f32> = (0..labels.len() * d).map(|i| ((i as f32 * 1.618_034).sin() * 1.7).fract()).collect();
        for semi_hard in [false, true] {
            let t = TripletLoss { margin: 0.4, semi_hard };
            let mut g = vec![0.0; emb.len()];
            triplet_grad(&t, &emb, d, &labels, 1.0, &mut g);
            // Mining is held fixed (as every implementation differentiates it): a coordinate whose
            // step changes the triplets chosen is skipped, and most are not.
            let chosen = |e: &[f32]| {
                let n = labels.len();
                let dist = distances(e, d, n);
                (0..n).map(|i| triplets(&t, &dist, n, &labels, i)).collect::<Vec<_>>()
            };
            let mut checked = 0;
            for k in 0..emb.len() {
                let eps = 1e-3;
                let moved = |s: f32| {
                    let mut e = emb.clone();
                    e[k] += s * eps;
                    e
                };
                if chosen(&moved(1.0)) != chosen(&emb) || chosen(&moved(-1.0)) != chosen(&emb) {
                    continue;
                }
                let at = |s: f32| triplet_losses(&t, &moved(s), d, &labels).iter().map(|&v| f64::from(v)).sum::<f64>();
                let numeric = (at(1.0) - at(-1.0)) / (2.0 * f64::from(eps));
                assert!(
                    (numeric - f64::from(g[k])).abs() < 1e-2,
                    "semi_hard {semi_hard}, coordinate {k}: {numeric} vs {}",
                    g[k]
                );
                checked += 1;
            }
            assert!(checked * 4 >= emb.len() * 3, "semi_hard {semi_hard}: {checked} of {} checked", emb.len());
        }
    }
}
