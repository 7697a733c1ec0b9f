//! Building a [`GpuTrainer`]: its buffers, pipelines and bind groups
//! (`build`), and the staged path's, on first use (`build_staged`).

use super::*;
use crate::gpu::batch::SlotSource;
use crate::gpu::pipes::bind_at;
use crate::gpu::sampler::SampleU;
use crate::gpu::shaders::Kernel;

impl GpuTrainer {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn build(
        ctx: Arc<GpuContext>,
        shape: Shape,
        cfg: StepConfig,
        opts: GpuOptions,
        fused_shape: FusedShape,
        max_groups: u32,
        layout: ChunkLayout,
        schedule: Schedule,
        cap: u32,
        resident: usize,
    ) -> Self {
        let FusedShape { wg, lanes, subgroup, blocks, vec4, undo_in_reduce, .. } = fused_shape;
        let d = shape.dim as u64;
        let policy = cfg.guard.policy;
        let batched = !schedule.is_full();
        // A batched step's table is single-buffered: its slots are.
        let double = policy.double_buffered() && !batched;
        let params = uniform(&ctx, "params", &params_u(shape, &cfg));
        let table_usage = wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
        let mut partial_base = 0u32;
        let mut seg_base = 0u32;
        let chunks: Vec<GpuChunk> = layout
            .spans
            .iter()
            .map(|&span| {
                let row_groups = (span.rows as u32).div_ceil(wg / lanes * blocks);
                let bytes = span.rows as u64 * d * 4;
                let c = GpuChunk {
                    span,
                    a: storage(&ctx, "table A", bytes, table_usage),
                    b: double.then(|| storage(&ctx, "table B", bytes, table_usage)),
                    snap: (policy == Policy::Rollback).then(|| storage(&ctx, "snapshot", bytes, table_usage)),
                    vel: (cfg.momentum > 0.0).then(|| {
                        let b = double.then(|| storage(&ctx, "velocity B", bytes, table_usage));
                        (storage(&ctx, "velocity A", bytes, table_usage), b)
                    }),
                    uniform: uniform(
                        &ctx,
                        "chunk",
                        &ChunkU { row_base: span.row_base as u32, rows: span.rows as u32, partial_base, seg_base },
                    ),
                    row_groups,
                };
                partial_base += row_groups;
                seg_base += (span.rows as u32).div_ceil(SEG);
                c
            })
            .collect();
        let anchors = storage(&ctx, "anchors", 2 * d * 4, wgpu::BufferUsages::COPY_DST);
        let state = storage(&ctx, "state", STATE_BYTES, wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC);
        ctx.queue.write_buffer(
            &state,
            0,
            bytemuck::bytes_of(&StateU {
                record: 0,
                stamp: 1, // the first pass's: never 0, the scan details' initial stamp
                cur: 0,
                halted: 0,
                s0: 0.0,
                d0: 0.0,
                lr: cfg.lr,
                skips: 0,
                rollbacks: 0,
                restore: 0,
                clip: 1.0,
                norm: 0.0,
                undo: 0,
            }),
        );
        // The batch buffers: the step's slots, gathered (A, and B for the
        // double-buffered guards), with their velocity.
        let x_groups = cap.div_ceil(wg / lanes * blocks);
        let x_bytes = cap as u64 * d * 4;
        // The slots a planned step dispatches over (`BatchDev::active`):
        // the plan's largest batch, however much room there is.
        let plan = if batched { schedule.max_slots() as u32 } else { 0 };
        let at_plan = slot_uniforms(plan, wg / lanes * blocks);
        // A table in one binding is read in place (DIRECT): no gather, and
        // no batch buffer A.
        let direct = batched && layout.one_binding();
        let (xa, xb, xva, xvb) = if batched {
            let mk = |label: &str, on: bool| on.then(|| storage(&ctx, label, x_bytes, wgpu::BufferUsages::empty()));
            let momentum = cfg.momentum > 0.0;
            (
                mk("batch A", !direct),
                mk("batch B", policy.double_buffered()),
                mk("batch velocity A", momentum && !direct),
                mk("batch velocity B", momentum && policy.double_buffered()),
            )
        } else {
            (None, None, None, None)
        };
        let x_uniform = uniform(&ctx, "batch chunk", &at_plan.chunk);
        let groups_max = partial_base.max(if batched { x_groups } else { 0 });
        let partials = storage(&ctx, "partials", groups_max as u64 * 16, wgpu::BufferUsages::empty());
        let detail = storage(
            &ctx,
            "scan details",
            groups_max as u64 * FUSED_SCAN_BUFS * DETAIL_BYTES,
            wgpu::BufferUsages::empty(),
        );
        let hits = storage(&ctx, "scan hits", 16, wgpu::BufferUsages::empty());
        let dummy = storage(&ctx, "unused binding", 16, wgpu::BufferUsages::empty());
        // A stand-in for read-only bindings beside read-write ones that
        // take `dummy` (one buffer cannot be both in one dispatch).
        let dummy_ro = storage(&ctx, "unused read-only binding", 16, wgpu::BufferUsages::empty());
        // UNDO: the fused pass's marks for reduce.wgsl's undo workgroups
        // (zeroed before each submission: `GpuTrainer::start_submission`).
        let undo_mark = storage(&ctx, "undo marks", 16, wgpu::BufferUsages::COPY_DST);
        let strikes = if policy == Policy::SkipRow {
            storage(&ctx, "strikes", shape.rows as u64 * 4, wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST)
        } else {
            storage(&ctx, "unused strikes", 16, wgpu::BufferUsages::empty())
        };
        let records = storage(
            &ctx,
            "records",
            STEPS_PER_SUBMIT as u64 * RECORD_BYTES,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let ring = (0..RING)
            .map(|_| Slot {
                buffer: readback(&ctx, "records ring", stream::SLOT_BYTES),
                stamps: stream::slot_stamps(&ctx).filter(|_| opts.step_timestamps != Some(false)),
                pending: None,
            })
            .collect();

        let consts = fused_shape.constants(shape, &cfg);
        // anchors: rows a and b in both table buffers of their chunks.
        let p = consts.pipeline(&ctx, &shaders::ANCHORS, "main", &[]);
        let (ca, ia) = layout.locate(cfg.anchor_a);
        let (cb, ib) = layout.locate(cfg.anchor_b);
        let at = uniform(&ctx, "anchor rows", &[(ia as u64 * d) as u32, (ib as u64 * d) as u32, 0, 0]);
        fn b_or_a(c: &GpuChunk) -> &wgpu::Buffer {
            c.b.as_ref().unwrap_or(&c.a)
        }
        // Velocity bindings, or 16-byte stand-ins without momentum (B: A
        // again when single-buffered would alias a writable binding).
        fn vel_a<'a>(c: &'a GpuChunk, dummy: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
            c.vel.as_ref().map_or(dummy, |v| &v.0)
        }
        fn vel_b<'a>(c: &'a GpuChunk, dummy: &'a wgpu::Buffer) -> &'a wgpu::Buffer {
            c.vel.as_ref().and_then(|v| v.1.as_ref()).unwrap_or(dummy)
        }
        let group = bind(
            &ctx,
            &p,
            &[&anchors, &state, &params, &chunks[ca].a, b_or_a(&chunks[ca]), &chunks[cb].a, b_or_a(&chunks[cb]), &at],
        );
        let anchors_pass = Pass { pipeline: p, groups: vec![group] };

        // The buffers a fused pass works on: the table's chunks, or the
        // batch buffers (one "chunk" of slots).
        // (The stand-in also takes binding 13's place where SAMPLED binds
        // the slots read-write at 21; `dummy` cannot: it stands in
        // read-write elsewhere in that group.)
        let unused_slots = storage(&ctx, "unused slots", 16, wgpu::BufferUsages::empty());
        let slots = if batched {
            storage(&ctx, "batch slots", cap as u64 * 16, wgpu::BufferUsages::COPY_DST)
        } else {
            unused_slots.clone()
        };
        // Random batches: the sampling parameters of a submission's steps,
        // read by sample.wgsl's pass or, under SAMPLED, by the fused step
        // (which binds it in every run: a few hundred bytes).
        let sample_schedule = storage(
            &ctx,
            "sample schedule",
            STEPS_PER_SUBMIT as u64 * std::mem::size_of::<SampleU>() as u64,
            wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        let prepass_on = cfg.needs_prepass();
        let attached = cfg.endpoints == crate::config::Endpoints::Attached;
        // Each slot's coefficients from the PREP pass: a full table's in a
        // buffer per chunk, indexed as its rows (one binding each, like the
        // table, however many rows it has); a batch's in `x_coef`, by slot.
        // 16-byte stand-ins where unused.
        let coef_for = |rows: u64, on: bool| {
            storage(
                &ctx,
                "slot coefficients",
                if prepass_on && on { rows * 16 } else { 16 },
                wgpu::BufferUsages::empty(),
            )
        };
        let coefs: Vec<wgpu::Buffer> = chunks.iter().map(|c| coef_for(c.span.rows as u64, !batched)).collect();
        let x_coef = coef_for(cap as u64, batched);
        let segs = if batched { cap.div_ceil(SEG) } else { seg_base };
        let colpart = storage(
            &ctx,
            "anchor-term sums",
            if attached { segs as u64 * 2 * d * 4 } else { 16 },
            wgpu::BufferUsages::empty(),
        );
        let agrad =
            storage(&ctx, "anchor gradients", if attached { 2 * d * 4 } else { 16 }, wgpu::BufferUsages::empty());
        // (buffer A, buffer B, velocity A, velocity B, chunk uniform,
        // coefficients) per bind group.
        let targets: Vec<[&wgpu::Buffer; 6]> = chunks
            .iter()
            .zip(&coefs)
            .map(|(c, cf)| [&c.a, c.b.as_ref().unwrap_or(&dummy), vel_a(c, &dummy), vel_b(c, &dummy), &c.uniform, cf])
            .collect();
        // DIRECT: A is the table (and its velocity), read by row.
        let x_targets: Vec<[&wgpu::Buffer; 6]> = if !batched {
            Vec::new()
        } else if direct {
            let c = &chunks[0];
            vec![[
                &c.a,
                xb.as_ref().unwrap_or(&dummy),
                vel_a(c, &dummy),
                xvb.as_ref().unwrap_or(&dummy),
                &x_uniform,
                &x_coef,
            ]]
        } else {
            vec![[
                xa.as_ref().expect("batch A"),
                xb.as_ref().unwrap_or(&dummy),
                xva.as_ref().unwrap_or(&dummy),
                xvb.as_ref().unwrap_or(&dummy),
                &x_uniform,
                &x_coef,
            ]]
        };
        let direct_flag = ("DIRECT", if direct { 1.0 } else { 0.0 });
        let fused = |update: bool, prep: bool, over: &[[&wgpu::Buffer; 6]], over_x: bool| {
            let flags = [
                ("UPDATE", if update { 1.0 } else { 0.0 }),
                ("SCAN", if opts.fused_scans && !prep { 1.0 } else { 0.0 }),
                ("PREP", if prep { 1.0 } else { 0.0 }),
                ("DIRECT", if direct && over_x { 1.0 } else { 0.0 }),
                ("SCAN_BUFS", FUSED_SCAN_BUFS as f64),
                ("UNDO_MARK", if undo_in_reduce && over_x { 1.0 } else { 0.0 }),
            ];
            let sampled = fused_shape.sampled && over_x;
            let c = Constants { batched: over_x, sampled, ..consts };
            let kernel = if subgroup > 0 { &shaders::FUSED_STEP_SG } else { &shaders::FUSED_STEP };
            let p = c.pipeline(&ctx, kernel, "main", &flags);
            let groups = over
                .iter()
                .map(|[a, b, va, vb, u, cf]| {
                    bind_at(
                        &ctx,
                        &p,
                        &[
                            (0, *a),
                            (1, *b),
                            (2, &anchors),
                            (3, &state),
                            (4, &partials),
                            (5, &params),
                            (6, *u),
                            (7, &strikes),
                            (8, &detail),
                            (9, &hits),
                            (11, *va),
                            (12, *vb),
                            // SAMPLED writes the slots (fused_step.wgsl: 21).
                            (13, if sampled { &unused_slots } else { &slots }),
                            (14, *cf),
                            (15, &agrad),
                            // VEC4's views of 0, 1, 11, 12.
                            (16, if vec4 { *a } else { &dummy }),
                            (17, if vec4 { *b } else { &dummy }),
                            (18, if vec4 { *va } else { &dummy }),
                            (19, if vec4 { *vb } else { &dummy }),
                            (20, &sample_schedule),
                            (21, if sampled { &slots } else { &dummy }),
                            (22, if undo_in_reduce && over_x { &undo_mark } else { &dummy }),
                        ],
                    )
                })
                .collect();
            Pass { pipeline: p, groups }
        };
        let fused_update =
            if batched { fused(true, false, &x_targets, true) } else { fused(true, false, &targets, false) };
        let fused_eval = fused(false, false, &targets, false);
        // Grids that only the guard's decision opens, and their indirect
        // arguments (written by reduce.wgsl: the grid when the flag in w is
        // set, no workgroups otherwise): rollback's restore per chunk
        // (state.restore), then the undo scatter of a batch read in place
        // under a double-buffered guard (state.undo).
        let mut guard_grids: Vec<[u32; 4]> = Vec::new();
        if policy == Policy::Rollback {
            guard_grids.extend(chunks.iter().map(|c| {
                let (x, y) = grid((c.span.rows as u64 * d).div_ceil(wg as u64) as u32, max_groups);
                [x, y, 1, GRID_ON_RESTORE]
            }));
        }
        if direct && policy.double_buffered() && !undo_in_reduce {
            let (x, y) = grid(slot_groups(cap, d, vec4, wg), max_groups);
            guard_grids.push([x, y, 1, GRID_ON_UNDO]);
        }
        // The indirect dispatches run unchecked by wgpu (context.rs): each
        // grid must be within the device's limits, as `grid` makes it.
        // (`max_groups` is at most the device's limit, and `grid`'s y
        // passes that only past its square of workgroups: 2^32 at 65 535.)
        let most = ctx.max_groups();
        assert!(
            guard_grids.iter().all(|g| g[..3].iter().all(|&n| n <= most)),
            "indirect grids {guard_grids:?} over {most}"
        );
        let (grid_buf, guard_args) = if !guard_grids.is_empty() {
            let bytes = guard_grids.len() as u64 * 16;
            let g = storage(&ctx, "guard grids", bytes, wgpu::BufferUsages::COPY_DST);
            ctx.queue.write_buffer(&g, 0, bytemuck::cast_slice(&guard_grids));
            (g, storage(&ctx, "guard dispatches", bytes, wgpu::BufferUsages::INDIRECT))
        } else {
            (
                storage(&ctx, "unused grid", 16, wgpu::BufferUsages::empty()),
                storage(&ctx, "unused dispatch", 16, wgpu::BufferUsages::empty()),
            )
        };
        let single = Constants { wg: fused_shape.single_wg, ..consts };
        // UNDO's workgroups after the reduce's: enough for an element a lane,
        // at most UNDO_GROUPS, each then looping over its share (a dropped
        // step's rows only); on a software adapter (where UNDO is asked for)
        // enough that no lane's loop passes its loop budget (`LoopBudget`).
        let undo_groups = if undo_in_reduce {
            let elements = cap as u64 * d;
            let lanes = fused_shape.single_wg as u64;
            let mut g = elements.div_ceil(lanes).min(UNDO_GROUPS as u64);
            if ctx.is_software() {
                g = g.max(elements.div_ceil(lanes * LOOP_BUDGET));
            }
            g as u32
        } else {
            0
        };
        let reduce = |update: bool, over_x: bool| {
            let c = Constants { batched: over_x, ..single };
            let undo = update && over_x && undo_in_reduce;
            let extra = [
                ("SCAN_BUFS", FUSED_SCAN_BUFS as f64),
                ("GRIDS", guard_grids.len() as f64),
                ("UNDO", if undo { 1.0 } else { 0.0 }),
            ];
            let p = c.pipeline(&ctx, &shaders::REDUCE, "main", &extra);
            let rp = match over_x {
                true => uniform(&ctx, "reduce", &at_plan.reduce),
                false => uniform(
                    &ctx,
                    "reduce",
                    &ReduceU { count: partial_base, update: update as u32, slots: plan, pad: 0 },
                ),
            };
            // UNDO: the table, read in place (one binding), its undo log
            // (batch B: the rows' old values by slot) and the marks.
            let table = if undo { &chunks[0].a } else { &dummy };
            let vel = if undo { vel_a(&chunks[0], &dummy) } else { &dummy };
            let log = if undo { xb.as_ref().expect("batch B under a double-buffered guard") } else { &dummy_ro };
            let log_v = xvb.as_ref().filter(|_| undo).unwrap_or(&dummy_ro);
            let g = bind_at(
                &ctx,
                &p,
                &[
                    (0, &partials),
                    (1, &state),
                    (2, &params),
                    (3, &rp),
                    (4, &strikes),
                    (5, &slots),
                    (6, &grid_buf),
                    (7, &guard_args),
                    (8, &detail),
                    (9, &hits),
                    (10, &records),
                    (11, table),
                    (12, vel),
                    (13, log),
                    (14, log_v),
                    (15, if undo { &undo_mark } else { &dummy_ro }),
                ],
            );
            (Pass { pipeline: p, groups: vec![g] }, rp)
        };
        let (reduce_update, reduce_u) = reduce(true, batched);
        let reduce_eval = reduce(false, false).0;
        let rollback = (policy == Policy::Rollback).then(|| {
            let make = |entry: &str| {
                let p = consts.pipeline(&ctx, &shaders::COPY_TABLE, entry, &[]);
                let groups = chunks
                    .iter()
                    .map(|c| {
                        let (b, s) = (c.b.as_ref().unwrap_or(&dummy), c.snap.as_ref().unwrap_or(&dummy));
                        let mut bufs = vec![&c.a, b, s, &state, &c.uniform];
                        if entry == "restore" {
                            bufs.extend([vel_a(c, &dummy), vel_b(c, &dummy)]);
                        }
                        bind(&ctx, &p, &bufs)
                    })
                    .collect();
                Pass { pipeline: p, groups }
            };
            (make("snapshot"), make("restore"))
        });

        // Two-read steps: PREP, the anchor term's sums, prepare.
        let prepass = prepass_on.then(|| {
            let over: &[[&wgpu::Buffer; 6]] = if batched { &x_targets } else { &targets };
            let prep = fused(false, true, over, batched);
            let anchor_sum = attached.then(|| {
                let c = Constants { batched, ..consts };
                let p = c.pipeline(&ctx, &shaders::ANCHOR_SUM, "main", &[direct_flag]);
                let groups = over
                    .iter()
                    .map(|[a, b, _, _, u, cf]| {
                        // Read-only here: single-buffered, A stands in for B.
                        let b = if std::ptr::eq(*b, &dummy) { *a } else { *b };
                        bind_at(
                            &ctx,
                            &p,
                            &[
                                (0, *a),
                                (1, b),
                                (2, &anchors),
                                (3, &state),
                                (6, *u),
                                (13, &slots),
                                (14, *cf),
                                (16, &colpart),
                            ],
                        )
                    })
                    .collect();
                Pass { pipeline: p, groups }
            });
            let p = single.pipeline(&ctx, &shaders::PREPARE, "main", &[]);
            // The anchors' coefficients: slots 0 and 1 of a batch, else
            // rows a and b of their chunks' buffers.
            let (coef_a, coef_b, slot_a, slot_b) =
                if batched { (&x_coef, &x_coef, 0, 1) } else { (&coefs[ca], &coefs[cb], ia as u32, ib as u32) };
            let pu = match batched {
                true => uniform(&ctx, "prepare", &at_plan.prepare),
                false => uniform(&ctx, "prepare", &PrepareU { count: partial_base, segs, slot_a, slot_b }),
            };
            let g = bind_at(
                &ctx,
                &p,
                &[
                    (0, &partials),
                    (1, &state),
                    (2, &params),
                    (3, &pu),
                    (4, &anchors),
                    (5, coef_a),
                    (6, &colpart),
                    (7, &agrad),
                    (8, coef_b),
                ],
            );
            Prepass { prep, anchor_sum, prepare: Pass { pipeline: p, groups: vec![g] }, prepare_u: pu }
        });

        // Batches: gather and scatter per table chunk, the slots' source.
        let batch = batched.then(|| {
            let xa = xa.as_ref().unwrap_or(&dummy);
            let io_u = uniform(&ctx, "batch io", &at_plan.io);
            let io = |entry: &str| {
                let p = consts.pipeline(&ctx, &shaders::BATCH_IO, entry, &[direct_flag]);
                let groups = chunks
                    .iter()
                    .map(|c| {
                        let all = [
                            (0, &c.a),
                            (1, vel_a(c, &dummy)),
                            (2, xa),
                            (3, xb.as_ref().unwrap_or(&dummy)),
                            (4, xva.as_ref().unwrap_or(&dummy)),
                            (5, xvb.as_ref().unwrap_or(&dummy)),
                            (6, &slots),
                            (7, &c.uniform),
                            (8, &state),
                            (9, &io_u),
                            // VEC4's views of 0–5.
                            (10, if vec4 { &c.a } else { &dummy }),
                            (11, if vec4 { vel_a(c, &dummy) } else { &dummy }),
                            (12, if vec4 { xa } else { &dummy }),
                            (13, if vec4 { xb.as_ref().unwrap_or(&dummy) } else { &dummy }),
                            (14, if vec4 { xva.as_ref().unwrap_or(&dummy) } else { &dummy }),
                            (15, if vec4 { xvb.as_ref().unwrap_or(&dummy) } else { &dummy }),
                        ];
                        // gather fills buffer A only.
                        let b_only = [3, 5, 13, 15];
                        let used: Vec<(u32, &wgpu::Buffer)> =
                            all.into_iter().filter(|(i, _)| entry == "scatter" || !b_only.contains(i)).collect();
                        bind_at(&ctx, &p, &used)
                    })
                    .collect();
                Pass { pipeline: p, groups }
            };
            let source = match schedule {
                Schedule::Random { sampler, .. } => {
                    let schedule = sample_schedule.clone();
                    let p = consts.pipeline(&ctx, &shaders::SAMPLE, "batch", &[]);
                    let g = bind_at(&ctx, &p, &[(2, &params), (3, &slots), (4, &schedule), (5, &state)]);
                    SlotSource::Random { sampler, schedule, pass: Pass { pipeline: p, groups: vec![g] } }
                }
                Schedule::Given(host) => {
                    let all = storage(
                        &ctx,
                        "user batches",
                        resident as u64 * cap as u64 * 16,
                        wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
                    );
                    let entries = host.iter().map(|h| h.entries).collect();
                    if resident == host.len() {
                        let words: Vec<[u32; 4]> = host.iter().flat_map(|h| slot_words(h, &cfg, cap)).collect();
                        ctx.queue.write_buffer(&all, 0, bytemuck::cast_slice(&words));
                        SlotSource::Given { all, entries, resident, streamed: None }
                    } else {
                        SlotSource::Given { all, entries, resident, streamed: Some(host) }
                    }
                }
                Schedule::Full => unreachable!("batched"),
            };
            BatchDev {
                cap,
                plan,
                active: plan,
                rows_per_group: wg / lanes * blocks,
                direct,
                slots: slots.clone(),
                gather: io("gather"),
                scatter: io("scatter"),
                source,
                x_uniform: x_uniform.clone(),
                reduce_u: reduce_u.clone(),
                io_u,
            }
        });

        GpuTrainer {
            ctx,
            shape,
            cfg,
            opts,
            fused: fused_shape,
            max_groups,
            layout,
            chunks,
            params,
            anchors,
            state,
            records,
            detail,
            hits,
            strikes,
            anchors_pass,
            fused_update,
            fused_eval,
            reduce_update,
            reduce_groups: 1 + undo_groups,
            copy_wg: Default::default(),
            undo_mark,
            reduce_eval,
            rollback,
            guard_args,
            ring,
            steps_done: 0,
            snapshot_due: false,
            anchors_fresh: false,
            without_reduce: false,
            pace: None,
            stepped: false,
            stop: None,
            staged: None,
            scanner: None,
            batch,
            prepass,
            manual: None,
            profile: None,
            profile_error: None,
        }
    }

    pub(super) fn build_staged(&mut self) -> Result<()> {
        if self.staged.is_some() {
            return Ok(());
        }
        let ctx = self.ctx.clone();
        let (b, d) = (self.shape.rows as u64, self.shape.dim as u64);
        if b * d * 4 > ctx.max_binding_bytes() {
            return Err(self.shape.too_large("the staged path gathers the batch into one storage binding"));
        }
        if (b * d).div_ceil(self.fused.wg as u64) > self.max_groups as u64 * self.max_groups as u64 {
            return Err(self.shape.too_large("the staged path's per-element grid exceeds the dispatch limit"));
        }
        let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let indices: Vec<u32> = (0..b as u32).collect();
        let idx = storage(&ctx, "indices", b * 4, wgpu::BufferUsages::COPY_DST);
        ctx.queue.write_buffer(&idx, 0, bytemuck::cast_slice(&indices));
        let xs = storage(&ctx, "gathered rows", b * d * 4, wgpu::BufferUsages::empty());
        let dist = storage(&ctx, "distances", b * 16, wgpu::BufferUsages::empty());
        let coef = storage(&ctx, "coefficients", b * 4, wgpu::BufferUsages::empty());
        let grads = storage(&ctx, "gradients", b * d * 4, wgpu::BufferUsages::empty());
        let row_groups = (b as u32).div_ceil(self.fused.wg);
        let partials = storage(&ctx, "staged partials", row_groups as u64 * 16, wgpu::BufferUsages::empty());
        let reduce_u = uniform(&ctx, "staged reduce", &ReduceU { count: row_groups, update: 1, slots: 0, pad: 0 });
        let c = self.constants();
        let (params, anchors, state) = (&self.params, &self.anchors, &self.state);
        let gather_p = c.pipeline(&ctx, &shaders::GATHER, "main", &[]);
        let sgd_p = c.pipeline(&ctx, &shaders::SGD, "main", &[]);
        let gather = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &gather_p, &[&ch.a, &idx, &xs, params, &ch.uniform]))
                .collect(),
            pipeline: gather_p,
        };
        let sgd = Pass {
            groups: self
                .chunks
                .iter()
                .map(|ch| bind(&ctx, &sgd_p, &[&ch.a, &idx, &grads, params, &ch.uniform, state]))
                .collect(),
            pipeline: sgd_p,
        };
        let single = |k: &Kernel, entry: &str, bufs: &[(u32, &wgpu::Buffer)]| {
            let p = c.pipeline(&ctx, k, entry, &[]);
            let g = bind_at(&ctx, &p, bufs);
            Pass { pipeline: p, groups: vec![g] }
        };
        let distances = single(
            &shaders::DISTANCES,
            "main",
            &[(0, &xs), (1, anchors), (2, &dist), (3, params), (4, &idx), (5, state)],
        );
        let forward =
            single(&shaders::LOSS, "forward", &[(2, &dist), (3, state), (4, &coef), (5, &partials), (7, params)]);
        let backward = single(
            &shaders::LOSS,
            "backward",
            &[(0, &xs), (1, anchors), (2, &dist), (4, &coef), (6, &grads), (7, params)],
        );
        let unused_rw = storage(&ctx, "unused binding", 16, wgpu::BufferUsages::empty());
        let unused_ro = storage(&ctx, "unused read-only binding", 16, wgpu::BufferUsages::empty());
        let reduce = single(
            &shaders::REDUCE,
            "main",
            &[
                (0, &partials),
                (1, state),
                (2, params),
                (3, &reduce_u),
                (4, &self.strikes),
                (5, &storage(&ctx, "unused slots", 16, wgpu::BufferUsages::empty())),
                (6, &storage(&ctx, "unused grid", 16, wgpu::BufferUsages::empty())),
                (7, &storage(&ctx, "unused dispatch", 16, wgpu::BufferUsages::empty())),
                (8, &self.detail),
                (9, &self.hits),
                (10, &self.records),
                // (No UNDO: one stand-in for the read-write bindings, one
                // for the read-only ones.)
                (11, &unused_rw),
                (12, &unused_rw),
                (13, &unused_ro),
                (14, &unused_ro),
                (15, &unused_ro),
            ],
        );
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu(e.to_string()));
        }
        self.staged = Some(Staged { gather, distances, forward, backward, sgd, reduce });
        Ok(())
    }
}

impl GpuTrainer {
    /// Rebuilds this batched trainer with batch buffers of at least
    /// `slots` slots (`Trainer::step_rows` on more rows than its largest
    /// planned batch, which the CPU takes as it comes): the same schedule
    /// and options, the kernel's shape chosen for the plan as before, the table, velocity, snapshot, guard
    /// state and strikes copied across on the device. The device holds
    /// both trainers meanwhile; where it cannot, this one is kept as it
    /// was and the error says so.
    pub(super) fn grow_batches(&mut self, slots: usize) -> Result<()> {
        let Some(b) = &self.batch else { unreachable!("step_rows checked it") };
        let schedule = match &b.source {
            SlotSource::Random { sampler, .. } => {
                Schedule::Random { sampler: *sampler, a: self.cfg.anchor_a as u32, b: self.cfg.anchor_b as u32 }
            }
            SlotSource::Given { streamed: Some(host), .. } => Schedule::Given(host.clone()),
            // All on the device: read back, entry by entry, dead slots
            // (row u32::MAX: no table has that row) cut off.
            SlotSource::Given { all, entries, streamed: None, .. } => {
                let mut words: Vec<u32> = Vec::with_capacity(entries.len() * b.cap as usize * 4);
                let bytes = entries.len() as u64 * b.cap as u64 * 16;
                read_blocks(&self.ctx, all, bytes, self.transfer_block(), &mut |v| {
                    words.extend(v.iter().map(|x| x.to_bits()));
                    Ok(())
                })?;
                let per = b.cap as usize * 4;
                let host = words
                    .chunks_exact(per)
                    .zip(entries)
                    .map(|(w, &entries)| StepSlots {
                        slots: w.chunks_exact(4).take_while(|s| s[0] != u32::MAX).map(|s| (s[0], s[1])).collect(),
                        entries,
                    })
                    .collect();
                Schedule::Given(host)
            }
        };
        let mut new = Self::from_schedule(self.ctx.clone(), self.shape, self.cfg, self.opts.clone(), schedule, slots)?;
        // The device state, buffer for buffer (a batched table is single-
        // buffered, but every copy there is goes across).
        let mut enc = self.ctx.device.create_command_encoder(&Default::default());
        let mut copy = |from: &wgpu::Buffer, to: &wgpu::Buffer, bytes: u64| {
            enc.copy_buffer_to_buffer(from, 0, to, 0, bytes);
        };
        let d = self.shape.dim as u64;
        for (o, n) in self.chunks.iter().zip(&new.chunks) {
            let bytes = o.span.rows as u64 * d * 4;
            copy(&o.a, &n.a, bytes);
            let pairs = [
                (o.b.as_ref(), n.b.as_ref()),
                (o.snap.as_ref(), n.snap.as_ref()),
                (o.vel.as_ref().map(|v| &v.0), n.vel.as_ref().map(|v| &v.0)),
                (o.vel.as_ref().and_then(|v| v.1.as_ref()), n.vel.as_ref().and_then(|v| v.1.as_ref())),
            ];
            for (from, to) in pairs {
                if let (Some(from), Some(to)) = (from, to) {
                    copy(from, to, bytes);
                }
            }
        }
        // (The state's record index is reset before each submission; its
        // stamp goes on, above every scan detail's, the new ones' 0.)
        copy(&self.state, &new.state, STATE_BYTES);
        if self.cfg.guard.policy == Policy::SkipRow {
            copy(&self.strikes, &new.strikes, self.shape.rows as u64 * 4);
        }
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.wait()?;
        new.steps_done = self.steps_done;
        new.snapshot_due = self.snapshot_due;
        new.pace = self.pace;
        new.stepped = self.stepped;
        new.stop = self.stop.take();
        new.profile = self.profile.take();
        new.profile_error = self.profile_error.take();
        *self = new;
        Ok(())
    }
}
