//! The device-side table initialisation and bit-for-bit determinism.

mod common;

use common::*;
use latent_line::cpu::CpuTrainer;
use latent_line::gpu::{GpuOptions, GpuTrainer};
use latent_line::{rng, Endpoints, Shape, StepConfig, TableSource, Trainer};

fn reference_table(seed: u64, shape: Shape) -> Vec<f64> {
    (0..shape.rows * shape.dim).map(|e| rng::normal_f64(seed, (e / shape.dim) as u32, (e % shape.dim) as u32)).collect()
}

#[test]
fn gpu_generates_the_reference_normals_in_every_binding() {
    let seed = seed("gpu_init");
    for dim in [3usize, 64] {
        let shape = Shape::new(1000, dim).unwrap();
        // Start from NaN everywhere: an element the kernel misses stays NaN.
        let poison = vec![f32::NAN; shape.rows * dim];
        // Several bindings, and at most 4 workgroups a dimension: 2-D grids.
        let opts = GpuOptions { max_chunk_rows: Some(301), max_groups: Some(4), ..GpuOptions::default() };
        let mut t = GpuTrainer::new(gpu(), shape, StepConfig::for_rows(1000), TableSource::Data(poison), opts).unwrap();
        t.generate(seed).unwrap();
        let got = t.read_table().unwrap();
        let want = reference_table(seed, shape);
        // GPU log/cos are not correctly rounded; the Box–Muller output is
        // checked to 1e-4 of its scale (1), which catches any index mix-up.
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!((g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0), "seed {seed} dim {dim}: element {i}: {g} vs {w}");
        }
    }
}

#[test]
fn cpu_generates_the_reference_normals() {
    let seed = seed("cpu_init");
    let shape = Shape::new(777, 5).unwrap();
    let mut t = CpuTrainer::new(shape, StepConfig::for_rows(777), TableSource::Random { seed }).unwrap();
    let (err, at) = max_rel_err(&t.read_table().unwrap(), &reference_table(seed, shape));
    assert!(err <= 1e-5, "seed {seed}: error {err:e} at {at}");
}

fn run_twice(make: impl Fn() -> Box<dyn Trainer>) -> (Vec<f32>, Vec<f32>) {
    let mut out = Vec::new();
    for _ in 0..2 {
        let mut t = make();
        let records = t.steps(7).unwrap();
        let mut table = t.read_table().unwrap();
        // Something trained, every step applied: two runs that did nothing
        // would be equal too.
        assert!(records.iter().all(|r| r.action == latent_line::Action::Applied), "{records:?}");
        // Records must repeat exactly too: append their bits (the f64
        // fields whole, as two f32 words each) to the table.
        table.extend(records.iter().flat_map(|r| {
            [r.excess_sum, r.excess_max, r.d0].into_iter().flat_map(|x| {
                let b = x.to_bits();
                [f32::from_bits(b as u32), f32::from_bits((b >> 32) as u32)]
            })
        }));
        out.push(table);
    }
    let b = out.pop().unwrap();
    (out.pop().unwrap(), b)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn same_options_give_bit_identical_tables() {
    let seed = seed("determinism");
    let shape = Shape::new(5000, 24).unwrap();
    let cfg = StepConfig { endpoints: Endpoints::Detached, ..StepConfig::for_rows(5000) };
    let (a, b) = run_twice(|| {
        let opts = GpuOptions { max_chunk_rows: Some(1700), ..GpuOptions::default() };
        Box::new(GpuTrainer::new(gpu(), shape, cfg, TableSource::Random { seed }, opts).unwrap())
    });
    assert_eq!(bits(&a), bits(&b), "GPU, seed {seed}");
    let initial = GpuTrainer::new(gpu(), shape, cfg, TableSource::Random { seed }, GpuOptions::default())
        .unwrap()
        .read_table()
        .unwrap();
    assert_ne!(bits(&a[..initial.len()]), bits(&initial), "nothing trained, seed {seed}");
    let (a, b) = run_twice(|| Box::new(CpuTrainer::new(shape, cfg, TableSource::Random { seed }).unwrap()));
    assert_eq!(bits(&a), bits(&b), "CPU, seed {seed}");
    // …and a different seed gives a different table.
    let mut other = CpuTrainer::new(shape, cfg, TableSource::Random { seed: seed ^ 1 }).unwrap();
    other.steps(7).unwrap();
    assert_ne!(bits(&a[..shape.rows * shape.dim]), bits(&other.read_table().unwrap()), "seed {seed}");
}

#[test]
fn gpu_timed_steps_are_the_same_steps() {
    // Timing steps with timestamp queries must not change what they do:
    // the table after `gpu_time_steps(5)` is the table after `steps(5)`;
    // timing evaluations changes nothing.
    let seed = seed("timed_steps");
    let shape = Shape::new(3000, 12).unwrap();
    let table = random_table(&mut rng(seed), 3000, 12);
    let cfg = StepConfig { endpoints: Endpoints::Detached, ..StepConfig::for_rows(3000) };
    let open = || GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), GpuOptions::default()).unwrap();
    let (mut a, mut b) = (open(), open());
    a.steps(5).unwrap();
    let timed = b.gpu_time_steps(5).unwrap();
    let has_timestamps = gpu().features.contains(wgpu::Features::TIMESTAMP_QUERY);
    assert_eq!(timed.is_some(), has_timestamps);
    // (Lavapipe, hence CI, has timestamp queries: the branch below runs.)
    if !has_timestamps {
        assert_eq!(b.run_state().unwrap().steps, 0, "untimeable steps ran anyway");
    } else {
        assert!(timed.unwrap() > std::time::Duration::ZERO);
        for vec4 in [false, true] {
            assert!(b.gpu_time_table_copies(3, vec4).unwrap().unwrap() > std::time::Duration::ZERO);
        }
        let (ta, tb) = (a.read_table().unwrap(), b.read_table().unwrap());
        assert!(ta.iter().zip(&tb).all(|(x, y)| x.to_bits() == y.to_bits()), "seed {seed}");
        // Timed evaluations change nothing either: the next step, its
        // record included, is the untimed trainer's.
        assert!(b.gpu_time_evaluations(4).unwrap().unwrap() > std::time::Duration::ZERO);
        assert_eq!(b.run_state().unwrap().steps, a.run_state().unwrap().steps, "evaluations counted as steps");
        let (ra, rb) = (a.steps(2).unwrap(), b.steps(2).unwrap());
        assert_eq!(ra, rb, "seed {seed}");
        let (ta, tb) = (a.read_table().unwrap(), b.read_table().unwrap());
        assert!(ta.iter().zip(&tb).all(|(x, y)| x.to_bits() == y.to_bits()), "seed {seed}");
    }
}

/// The benches' `gpu_time_fused_passes` runs the step's own fused passes,
/// their reduce pass left out: under `ignore` with frozen anchors (which
/// write in place and need nothing the reduce decides) the table after
/// three of them is the table after three steps, over several bindings;
/// under skip-step, with no reduce pass to switch the buffers, the table
/// stays as it was; batches are refused.
#[test]
fn fused_passes_alone_are_the_steps_passes() {
    let seed = seed("fused_passes_alone");
    let shape = Shape::new(2500, 20).unwrap();
    let table = random_table(&mut rng(seed), 2500, 20);
    let mut cfg = StepConfig::for_rows(2500);
    cfg.guard.policy = latent_line::guard::Policy::Ignore;
    let opts = GpuOptions { max_chunk_rows: Some(900), ..GpuOptions::default() };
    let open = || GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts.clone()).unwrap();
    let (mut a, mut b) = (open(), open());
    a.steps(3).unwrap();
    // (Lavapipe, hence CI, has timestamp queries.)
    assert!(b.gpu_time_fused_passes(3).unwrap().expect("timestamps") > std::time::Duration::ZERO);
    let (ta, tb) = (a.read_table().unwrap(), b.read_table().unwrap());
    assert_ne!(bits(&ta), bits(&table), "nothing trained, seed {seed}");
    assert_eq!(bits(&ta), bits(&tb), "seed {seed}");
    // Left out indeed: under skip-step no reduce pass switches the table
    // buffers, so the table the passes read is still the current one.
    let skip = StepConfig::for_rows(2500);
    let mut c = GpuTrainer::new(gpu(), shape, skip, TableSource::Data(table.clone()), opts.clone()).unwrap();
    c.gpu_time_fused_passes(2).unwrap();
    assert_eq!(bits(&c.read_table().unwrap()), bits(&table), "seed {seed}");
    let batches = latent_line::Batches::Random { size: 100, seed };
    let mut batched =
        GpuTrainer::with_batches(gpu(), shape, cfg, TableSource::Data(table.clone()), opts.clone(), batches).unwrap();
    let err = batched.gpu_time_fused_passes(1).unwrap_err().to_string();
    assert!(err.contains("full-table steps only"), "{err}");
}

/// Each step of the fused path is timed by timestamp queries around its
/// pass, read back with its record (`Record::gpu_seconds`): positive, and
/// together no more than the wall clock of the call that ran them (the
/// passes run one after another inside it). Under --profile (each kernel
/// in a timed pass of its own) a step's time is the sum of its kernels'.
/// Not timed: an evaluation, the staged path, steps asked not to be.
#[test]
fn fused_steps_carry_their_gpu_time() {
    let seed = seed("step_gpu_time");
    let shape = Shape::new(5000, 16).unwrap();
    let table = random_table(&mut rng(seed), shape.rows, shape.dim);
    let cfg = StepConfig::for_rows(shape.rows);
    let open = |opts: GpuOptions| GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts).unwrap();
    // (Lavapipe, hence CI, has timestamp queries.)
    let has_timestamps = gpu().features.contains(wgpu::Features::TIMESTAMP_QUERY);
    let mut t = open(GpuOptions::default());
    let started = std::time::Instant::now();
    // 21: two full submissions of 8 and a part of one, through the ring.
    let records = t.steps(21).unwrap();
    let wall = started.elapsed().as_secs_f64();
    assert_eq!(records.len(), 21);
    if has_timestamps {
        let secs: Vec<f64> =
            records.iter().map(|r| r.gpu_seconds.expect("a fused step without its GPU time")).collect();
        assert!(secs.iter().all(|&s| s > 0.0 && s.is_finite()), "{secs:?}");
        assert!(secs.iter().sum::<f64>() <= wall, "steps' GPU time {secs:?} over the call's wall clock {wall} s");
    } else {
        assert!(records.iter().all(|r| r.gpu_seconds.is_none()));
    }
    assert_eq!(t.evaluate().unwrap().gpu_seconds, None, "an evaluation is not a step");
    assert!(t.set_profile(true).unwrap() == has_timestamps);
    let profiled: Vec<Option<f64>> = t.steps(3).unwrap().iter().map(|r| r.gpu_seconds).collect();
    if has_timestamps {
        let kernels: f64 = t.profile().unwrap().iter().map(|k| k.seconds).sum();
        let steps: f64 = profiled.iter().map(|s| s.expect("a profiled step without its time")).sum();
        assert!((steps - kernels).abs() <= 1e-9 * kernels, "steps {profiled:?} against the kernels' {kernels} s");
    }
    let mut cfg_ignore = cfg;
    cfg_ignore.guard.policy = latent_line::guard::Policy::Ignore;
    let staged_opts = GpuOptions { path: latent_line::gpu::StepPath::Staged, ..GpuOptions::default() };
    let mut staged = GpuTrainer::new(gpu(), shape, cfg_ignore, TableSource::Data(table.clone()), staged_opts).unwrap();
    assert!(staged.steps(2).unwrap().iter().all(|r| r.gpu_seconds.is_none()), "the staged path's steps are passes");
    // Timed or not, the same steps (and none timed when asked not to be).
    let mut untimed = open(GpuOptions { step_timestamps: Some(false), ..GpuOptions::default() });
    let plain = untimed.steps(21).unwrap();
    assert!(plain.iter().all(|r| r.gpu_seconds.is_none()), "timed when asked not to be");
    assert_eq!(plain, records, "seed {seed}");
}

/// `steps_streamed` (the command line's loop: records handed over a group at
/// a time while later steps run) gives what `steps` gives, record for record
/// and bit for bit; stopped after its first group, it runs fewer steps, and
/// the table is exactly that many steps on.
#[test]
fn streamed_steps_match_plain_steps_and_stop_when_asked() {
    let seed = seed("streamed");
    let shape = Shape::new(3000, 12).unwrap();
    let table = spaced_table(seed, shape, 0, 2999, 0.3);
    let cfg = StepConfig { lr: 0.01, endpoints: Endpoints::Detached, ..StepConfig::for_rows(3000) };
    let open = |gpu_side: bool| -> Box<dyn Trainer> {
        let source = TableSource::Data(table.clone());
        if gpu_side {
            Box::new(GpuTrainer::new(gpu(), shape, cfg, source, GpuOptions::default()).unwrap())
        } else {
            Box::new(CpuTrainer::new(shape, cfg, source).unwrap())
        }
    };
    for gpu_side in [false, true] {
        let ctx = format!("gpu {gpu_side}, seed {seed}");
        let mut plain = open(gpu_side);
        let want = plain.steps(45).unwrap();
        let mut streamed = open(gpu_side);
        let (mut got, mut groups) = (Vec::new(), 0);
        let ran = streamed
            .steps_streamed(45, &mut |g| {
                groups += 1;
                got.extend(g);
                true
            })
            .unwrap();
        assert_eq!((ran, got.len()), (45, 45), "{ctx}");
        assert!(groups > 1, "{ctx}: one group");
        assert_eq!(got, want, "{ctx}: records differ");
        assert!(bits(&streamed.read_table().unwrap()) == bits(&plain.read_table().unwrap()), "{ctx}: tables differ");

        let mut stopped = open(gpu_side);
        let mut ran = stopped.steps_streamed(45, &mut |_| false).unwrap();
        assert!(ran > 0 && ran < 45, "{ctx}: ran {ran}");
        if gpu_side {
            // Its steps' pace not yet known, a GPU trainer submits one step
            // alone (a stop waits on no more: a slow device's step may take
            // seconds); known, at most the ring's 32 more (4 submissions).
            assert_eq!(ran, 1, "{ctx}: a first submission of more than one step");
            let more = stopped.steps_streamed(45, &mut |_| false).unwrap();
            assert!((1..=32).contains(&more), "{ctx}: ran {more} more");
            ran += more;
        }
        let mut again = open(gpu_side);
        again.steps(ran).unwrap();
        assert!(
            bits(&stopped.read_table().unwrap()) == bits(&again.read_table().unwrap()),
            "{ctx}: not {ran} steps on"
        );
    }
}

/// The CPU backend gives the same bits on any number of threads (SPEC §11:
/// its sums fold fixed chunks in a fixed order; the threads only share
/// them out): the full-table pass, and the general step (a batch large
/// enough to write back in parallel bands, attached anchors, clipping,
/// momentum), table and records.
#[test]
fn cpu_bits_do_not_depend_on_the_thread_count() {
    let seed = seed("cpu_threads");
    let (rows, dim) = (30_000usize, 12usize);
    let shape = Shape::new(rows, dim).unwrap();
    let table = random_table(&mut rng(seed), rows, dim);
    let full = StepConfig { endpoints: Endpoints::Detached, ..StepConfig::for_rows(rows) };
    let general = StepConfig {
        endpoints: Endpoints::Attached,
        clip_norm: 50.0,
        momentum: 0.5,
        weight_decay: 0.01,
        ..StepConfig::for_rows(rows)
    };
    for (cfg, batches) in [
        (full, latent_line::Batches::Full),
        (general, latent_line::Batches::Random { size: 9000, seed }),
        (general, latent_line::Batches::Full),
    ] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let source = TableSource::Data(table.clone());
                let mut t = CpuTrainer::with_batches(shape, cfg, source, batches.clone()).unwrap();
                let recs = t.steps(4).unwrap();
                assert!(recs.iter().all(|r| r.action == latent_line::Action::Applied), "{recs:?}");
                (bits(&t.read_table().unwrap()), format!("{recs:?}"))
            })
        };
        let one = run(1);
        assert_ne!(one.0, bits(&table), "{batches:?}: nothing trained, seed {seed}");
        for threads in [2, 5] {
            let got = run(threads);
            assert!(got.0 == one.0, "{batches:?}: {threads} threads give another table, seed {seed}");
            assert_eq!(got.1, one.1, "{batches:?}: {threads} threads give other records, seed {seed}");
        }
    }
}

/// Tables cross between host and device in transfer blocks (uploads,
/// read-backs, the saves that stream from them): blocks that split rows
/// and chunks unevenly move every value, in order, and a trained table
/// reads back the same through any block size.
#[test]
fn tables_cross_to_and_from_the_gpu_in_blocks_of_any_size() {
    let seed = seed("transfer_blocks");
    let shape = Shape::new(1000, 7).unwrap();
    let table = random_table(&mut rng(seed), 1000, 7);
    let velocity = random_table(&mut rng(seed ^ 1), 1000, 7);
    let cfg = StepConfig { momentum: 0.5, endpoints: Endpoints::Detached, ..StepConfig::for_rows(1000) };
    let open = |block: Option<u64>| {
        // Chunks of 301 rows; blocks of 1000 bytes (250 values: rows and
        // chunks split mid-way), or the default (one block a chunk).
        let opts = GpuOptions { max_chunk_rows: Some(301), transfer_block_bytes: block, ..GpuOptions::default() };
        GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts).unwrap()
    };
    let mut small = open(Some(1000));
    // Every value uploaded (a fresh buffer holds zeros), in its place.
    assert_eq!(bits(&small.read_table().unwrap()), bits(&table), "seed {seed}: the upload");
    let mut blocks = Vec::new();
    small
        .read_table_into(&mut |b: &[f32]| {
            blocks.push(b.to_vec());
            Ok(())
        })
        .unwrap();
    // 301 × 7 × 4 bytes a chunk: 9 blocks each (8 full), 97 rows: 3.
    let sizes: Vec<usize> = blocks.iter().map(Vec::len).collect();
    assert_eq!(sizes.len(), 3 * 9 + 3, "{sizes:?}");
    assert_eq!(bits(&blocks.concat()), bits(&table), "seed {seed}: read in blocks");
    // A sink that fails (a full disk) stops the read there, with its error,
    // and leaves the trainer as it was: the next read is whole.
    let mut taken = 0;
    let err = small
        .read_table_into(&mut |_: &[f32]| {
            taken += 1;
            if taken == 2 {
                return Err(latent_line::Error::Gpu("the sink is full".into()));
            }
            Ok(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("full") && taken == 2, "{err} after {taken} blocks");
    assert_eq!(bits(&small.read_table().unwrap()), bits(&table), "seed {seed}: after a failed read");
    small.set_velocity(&velocity).unwrap();
    assert_eq!(bits(&small.read_velocity().unwrap().unwrap()), bits(&velocity), "seed {seed}: the velocity");
    // Trained, then read back through small blocks and through whole chunks.
    let mut whole = open(None);
    whole.set_velocity(&velocity).unwrap();
    small.steps(3).unwrap();
    whole.steps(3).unwrap();
    let trained = whole.read_table().unwrap();
    assert_ne!(bits(&trained), bits(&table), "seed {seed}: nothing trained");
    assert_eq!(bits(&small.read_table().unwrap()), bits(&trained), "seed {seed}");
    assert_eq!(bits(&small.read_velocity().unwrap().unwrap()), bits(&whole.read_velocity().unwrap().unwrap()));
}

/// A table streamed in (`TableSource::Stream`: a file's reader) is asked
/// for a block at a time, each value once, in order, whatever the block
/// and chunk sizes; a feed that fails stops the trainer's construction with
/// its error; the velocity streams in the same way.
#[test]
fn tables_stream_into_the_gpu_a_block_at_a_time() {
    let seed = seed("stream_in");
    let shape = Shape::new(1000, 7).unwrap();
    let table = random_table(&mut rng(seed), 1000, 7);
    let velocity = random_table(&mut rng(seed ^ 1), 1000, 7);
    let cfg = StepConfig { momentum: 0.5, endpoints: Endpoints::Detached, ..StepConfig::for_rows(1000) };
    let opts = GpuOptions { max_chunk_rows: Some(301), transfer_block_bytes: Some(1000), ..GpuOptions::default() };
    // A feed over `v` that records the sizes asked for, and fails at block
    // `fail` where given.
    let feed = |v: Vec<f32>, asked: std::rc::Rc<std::cell::RefCell<Vec<usize>>>, fail: Option<usize>| {
        let mut at = 0;
        move |out: &mut [f32]| {
            asked.borrow_mut().push(out.len());
            if fail == Some(asked.borrow().len()) {
                return Err(latent_line::Error::Gpu("the file went away".into()));
            }
            out.copy_from_slice(&v[at..at + out.len()]);
            at += out.len();
            Ok(())
        }
    };
    let asked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let source = TableSource::Stream(Box::new(feed(table.clone(), asked.clone(), None)));
    let mut t = GpuTrainer::new(gpu(), shape, cfg, source, opts.clone()).unwrap();
    assert_eq!(bits(&t.read_table().unwrap()), bits(&table), "seed {seed}: the streamed upload");
    // 301 × 7 values a chunk: 8 blocks of 250 and one of 107, three times;
    // the last chunk's 97 × 7: 250, 250, 179.
    let chunk = [vec![250; 8], vec![107]].concat();
    let want = [chunk.clone(), chunk.clone(), chunk, vec![250, 250, 179]].concat();
    assert_eq!(*asked.borrow(), want);
    let asked_v = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    t.set_velocity_from(&mut feed(velocity.clone(), asked_v.clone(), None)).unwrap();
    assert_eq!(bits(&t.read_velocity().unwrap().unwrap()), bits(&velocity), "seed {seed}: the streamed velocity");
    assert_eq!(*asked_v.borrow(), want);
    // The same run as from the table at hand.
    let mut at_hand = GpuTrainer::new(gpu(), shape, cfg, TableSource::Data(table.clone()), opts.clone()).unwrap();
    at_hand.set_velocity(&velocity).unwrap();
    t.steps(2).unwrap();
    at_hand.steps(2).unwrap();
    assert_eq!(bits(&t.read_table().unwrap()), bits(&at_hand.read_table().unwrap()), "seed {seed}");
    // A feed that fails at its fifth block: no trainer, the feed's error.
    let asked = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let source = TableSource::Stream(Box::new(feed(table.clone(), asked.clone(), Some(5))));
    let err = GpuTrainer::new(gpu(), shape, cfg, source, opts).err().expect("a failed feed");
    assert!(err.to_string().contains("went away"), "{err}");
    assert_eq!(asked.borrow().len(), 5, "asked on after the failure");
}
