//! The runtime's contract: results equal the reference oracle on every tier, are
//! bit-identical for any thread count, any batch up to the plan, and inputs are checked.

mod common;

use std::sync::Arc;

use cnnrt::kernels::reference::run_graph;
use cnnrt::{Error, Isa, Model, Session, SessionOptions, Threads};

#[test]
fn model_and_session_are_thread_safe_types() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Model>();
    send_sync::<Arc<Model>>();
    send::<Session>();
}

#[test]
fn zoo_matches_reference_on_every_tier_and_batch() {
    let zoo = common::zoo(1);
    let model = zoo.model();
    let refs: Vec<&[f32]> = zoo.weights.iter().map(|w| w.as_slice()).collect();
    let mut seed = 5u64;
    let x = common::rand_vec(&mut seed, 4 * 1200, -2.0, 2.0);
    let expect = run_graph(&zoo.graph, &refs, &[&x], 4).unwrap().remove(0);
    for isa in Isa::supported() {
        let mut s = model
            .session(SessionOptions::default().max_batch(4).max_isa(isa))
            .unwrap();
        assert!(s.isa() <= isa);
        let got = s.run(&x, 4).unwrap().to_vec();
        let e = common::rel_err(&got, &expect);
        assert!(e < 1e-4, "[{isa}] rel err {e:.2e}");
        // Each sample alone gives the same as in the batch.
        for i in 0..4 {
            let one = s.run(&x[i * 1200..(i + 1) * 1200], 1).unwrap();
            assert!(common::rel_err(one, &expect[i * 10..(i + 1) * 10]) < 1e-4);
        }
    }
}

#[test]
fn results_are_bit_identical_for_any_thread_count() {
    let zoo = common::zoo(2);
    let model = zoo.model();
    let mut seed = 6u64;
    let x = common::rand_vec(&mut seed, 3 * 1200, -2.0, 2.0);
    for isa in Isa::supported() {
        let mut base = model
            .session(SessionOptions::default().max_batch(3).max_isa(isa))
            .unwrap();
        let want = base.run(&x, 3).unwrap().to_vec();
        for t in [2usize, 3, 5] {
            let mut s = model
                .session(SessionOptions {
                    max_batch: 3,
                    max_isa: Some(isa),
                    threads: Threads::Count(t),
                    ..Default::default()
                })
                .unwrap();
            let got = s.run(&x, 3).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "[{isa}] {t} threads differ from 1"
            );
        }
        let pool = Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(2)
                .build()
                .unwrap(),
        );
        let mut s = model
            .session(SessionOptions {
                max_batch: 3,
                max_isa: Some(isa),
                threads: Threads::Pool(pool),
                ..Default::default()
            })
            .unwrap();
        assert!(s
            .run(&x, 3)
            .unwrap()
            .iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

/// Where the GEMMs' prefetch hints put the weights is a hint, never a result: sessions
/// planned with either target give the same bits on every tier, at 1 and 2 threads, and
/// report the target they were given. The models cover the GEMM paths that prefetch:
/// im2col, Winograd, implicit GEMM, fully connected (the zoo), fused blocks and the
/// channels-last 1×1 layers.
#[test]
fn prefetch_targets_give_identical_results() {
    use cnnrt::kernels::gemm::PrefetchTo;
    let mut seed = 17u64;
    for (name, zoo) in [
        ("zoo", common::zoo(2)),
        ("inverted_residuals", common::inverted_residuals()),
        ("small_map_blocks", common::small_map_blocks()),
    ] {
        let model = zoo.model();
        let per: usize = model.input_shape().iter().product();
        let x = common::rand_vec(&mut seed, 2 * per, -2.0, 2.0);
        for isa in Isa::supported() {
            for t in [1, 2] {
                let run = |to: PrefetchTo| {
                    let mut s = model
                        .session(
                            SessionOptions::default()
                                .max_batch(2)
                                .max_isa(isa)
                                .threads(Threads::Count(t))
                                .prefetch_to(to),
                        )
                        .unwrap();
                    assert_eq!(s.prefetch_to(), to);
                    s.run(&x, 2).unwrap().to_vec()
                };
                let (l1, l2) = (run(PrefetchTo::L1), run(PrefetchTo::L2));
                assert!(
                    l1.iter().zip(&l2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{name} [{isa}] {t} threads: L1 and L2 prefetch differ"
                );
            }
        }
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let model = common::zoo(3).model();
    let mut s = model
        .session(SessionOptions::default().max_batch(2))
        .unwrap();
    assert!(matches!(s.run(&[0.0; 1199], 1), Err(Error::Input(_))));
    assert!(matches!(s.run(&[0.0; 3600], 3), Err(Error::Input(_))));
    assert!(matches!(s.run(&[], 0), Err(Error::Input(_))));
    assert!(matches!(
        model.session(SessionOptions::default().max_batch(0)),
        Err(Error::Limit(_))
    ));
    assert!(matches!(
        model.session(SessionOptions::default().max_batch(1 << 30)),
        Err(Error::Limit(_))
    ));
}

#[test]
fn nan_and_inf_propagate_without_panics() {
    let model = common::zoo(4).model();
    for isa in Isa::supported() {
        let mut s = model
            .session(SessionOptions::default().max_isa(isa))
            .unwrap();
        let mut x = vec![0.5f32; 1200];
        x[7] = f32::NAN;
        x[100] = f32::INFINITY;
        x[200] = f32::NEG_INFINITY;
        let out = s.run(&x, 1).unwrap();
        assert_eq!(out.len(), 10);
        assert!(
            out.iter().any(|v| v.is_nan()),
            "[{isa}] NaN in the input reaches the output: {out:?}"
        );
        let y = vec![f32::INFINITY; 1200];
        s.run(&y, 1).unwrap();
    }
}

#[test]
fn workspace_is_smaller_than_the_sum_of_activations() {
    let zoo = common::zoo(5);
    let model = zoo.model();
    let s = model.session(SessionOptions::default()).unwrap();
    let total: usize = zoo
        .graph
        .values
        .iter()
        .map(|v| v.shape.iter().product::<usize>() * 4)
        .sum();
    assert!(
        s.workspace_bytes() < total,
        "arena {} vs {} bytes of values",
        s.workspace_bytes(),
        total
    );
}
