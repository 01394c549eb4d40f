//! GPU check: writes random-weight LLaMA-family GGUFs (Q8_0) at two real shapes, SmolLM2-135M
//! and a LLaMA-3.2-1B-like ~1B, with random PEFT LoRA members (r=8 on q/v/up/down of every
//! layer); checks that CUDA gives the CPU's member label probabilities (within 1e-3) and greedy
//! tokens (M=5); then prints label-scoring questions/s (16 prompts of ~40 tokens) and decode
//! tokens/s (all sequences of a batch together) per shape, device, M and batch size.
//!
//! `cargo run --release -p lora-ens --features cuda --example gpu_check -- [--shapes smollm2,1b]
//! [--members 1,5,16] [--batches 1,16] [--tokens 32] [--devices cuda,cpu]`; on a machine without
//! the toolkit, `make gpu-check` builds it into `dist/gpu-check/` with a `run.sh`. Built without
//! the `cuda` feature it runs on the CPU only and says so. Exit status 1 when a parity check
//! fails, or when a CUDA build cannot open CUDA device 0.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml};
use candle_core::{DType, Device, Tensor};
use lora_ens::generate::Decoding;
use lora_ens::{Ensemble, GenerateOptions, ScoreOptions};
use rayon::prelude::*;

const USAGE: &str = "gpu_check [--shapes smollm2,1b] [--members 1,5,16] [--batches 1,16] \
                     [--tokens 32] [--devices cuda,cpu]";
/// Members of the parity check, its tolerance on probabilities, and the top-2 log-probability
/// gap below which a greedy divergence is a near tie (reported, not failed).
const PARITY_MEMBERS: usize = 5;
const PROB_TOL: f32 = 1e-3;
const NEAR_TIE: f32 = 1e-3;
const RANK: usize = 8;
const LABELS: [&str; 4] = ["A", "B", "C", "D"];

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("{0}\nusage: {USAGE}")]
    Usage(String),
    #[error(transparent)]
    Engine(#[from] lora_ens::Error),
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("CUDA device 0 cannot be opened ({0}); pass `--devices cpu` to run on the CPU only")]
    Device(String),
}

type Result<T> = std::result::Result<T, CheckError>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckError + '_ {
    move |e| CheckError::Io(path.to_path_buf(), e)
}

/// One model shape; both tie the lm_head to the token embeddings, as the real models do.
#[derive(Debug)]
struct Shape {
    name: &'static str,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    ffn: usize,
    vocab: usize,
    rope_base: f32,
}

#[rustfmt::skip]
const SHAPES: [Shape; 2] = [
    Shape { name: "smollm2", hidden: 576, layers: 30, heads: 9, kv_heads: 3, ffn: 1536, vocab: 49152, rope_base: 1e5 },
    Shape { name: "1b", hidden: 2048, layers: 16, heads: 32, kv_heads: 8, ffn: 8192, vocab: 128256, rope_base: 5e5 },
];

impl Shape {
    /// The seven projections of a block: GGUF name, HF module, `(out, in)` features.
    fn projections(&self) -> [(&'static str, &'static str, usize, usize); 7] {
        let (h, f) = (self.hidden, self.ffn);
        let kv = self.kv_heads * h / self.heads;
        [
            ("attn_q", "self_attn.q_proj", h, h),
            ("attn_k", "self_attn.k_proj", kv, h),
            ("attn_v", "self_attn.v_proj", kv, h),
            ("attn_output", "self_attn.o_proj", h, h),
            ("ffn_gate", "mlp.gate_proj", f, h),
            ("ffn_up", "mlp.up_proj", f, h),
            ("ffn_down", "mlp.down_proj", h, f),
        ]
    }
}

struct Args {
    shapes: Vec<&'static Shape>,
    members: Vec<usize>,
    batches: Vec<usize>,
    tokens: usize,
    devices: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        shapes: SHAPES.iter().collect(),
        members: vec![1, 5, 16],
        batches: vec![1, 16],
        tokens: 32,
        devices: vec!["cuda".into(), "cpu".into()],
    };
    let usage = |m: String| CheckError::Usage(m);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .filter(|_| !flag.starts_with("-h") && flag != "--help");
        let value = value.ok_or_else(|| usage(format!("`{flag}` needs a value")))?;
        let list: Vec<String> = value.split(',').map(|x| x.trim().to_lowercase()).collect();
        let numbers = || -> Result<Vec<usize>> {
            let bad = |x: &String| usage(format!("`{flag}`: `{x}` is not a positive integer"));
            list.iter()
                .map(|x| x.parse().ok().filter(|&n| n > 0).ok_or_else(|| bad(x)))
                .collect()
        };
        match flag.as_str() {
            "--members" => a.members = numbers()?,
            "--batches" => a.batches = numbers()?,
            "--tokens" => a.tokens = numbers()?.iter().sum(),
            "--devices" => a.devices = list,
            "--shapes" => {
                a.shapes.clear();
                for n in &list {
                    let shape = SHAPES.iter().find(|s| s.name == n);
                    a.shapes
                        .push(shape.ok_or(usage(format!("unknown shape `{n}`")))?);
                }
            }
            _ => return Err(usage(format!("unknown argument `{flag}`"))),
        }
    }
    if a.tokens < 2 {
        return Err(usage("`--tokens` must be at least 2".into()));
    }
    match a.devices.iter().find(|d| *d != "cpu" && *d != "cuda") {
        Some(d) => Err(usage(format!("unknown device `{d}` (cpu, cuda)"))),
        None => Ok(a),
    }
}

/// SplitMix64: a small seeded generator, so every run writes the same models.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A `(rows, cols)` tensor uniform in `[-a, a)`, standard deviation 0.02.
    fn tensor(&mut self, rows: usize, cols: usize) -> Result<Tensor> {
        let a = 0.02 * 3f32.sqrt() / (1 << 23) as f32;
        let v = (0..rows * cols).map(|_| ((self.next() >> 40) as f32 - (1 << 23) as f32) * a);
        Ok(Tensor::from_iter(v, &Device::Cpu)?.reshape((rows, cols))?)
    }
}

/// A random `(rows, cols)` Q8_0 matrix, quantized 256 rows at a time on every core.
fn random_q8(seed: u64, rows: usize, cols: usize) -> Result<QTensor> {
    let chunks = (0..rows.div_ceil(256)).into_par_iter().map(|c| {
        let t = SplitMix(seed << 32 | c as u64).tensor(256.min(rows - c * 256), cols)?;
        Ok(QTensor::quantize(&t, GgmlDType::Q8_0)?.data()?.into_owned())
    });
    let bytes = chunks.collect::<Result<Vec<_>>>()?.concat();
    let (dtype, dev) = (GgmlDType::Q8_0, &Device::Cpu);
    Ok(qtensor_from_ggml(dtype, &bytes, vec![rows, cols], dev)?)
}

/// The byte-level BPE vocabulary: printable ASCII, space and newline as GPT-2 spells them,
/// " A".." D" as single tokens, then fillers up to `vocab`.
fn vocabulary(vocab: usize) -> Vec<String> {
    let mut tokens: Vec<String> = (33..=126u8).map(|b| char::from(b).to_string()).collect();
    tokens.extend(["Ġ".to_owned(), "Ċ".to_owned()]);
    tokens.extend(LABELS.map(|l| format!("Ġ{l}")));
    tokens.extend((tokens.len()..vocab).map(|i| format!("tok{i}")));
    tokens
}

/// The GGUF: Q8_0 matrices, f32 norms, `llama.*` metadata and the vocabulary; it has no
/// end-of-sequence token, so every decode runs its full length.
fn write_model(s: &Shape, path: &Path) -> Result<()> {
    let mut specs = vec![("token_embd.weight".to_owned(), s.vocab, s.hidden)];
    for i in 0..s.layers {
        for (n, _, rows, cols) in s.projections() {
            specs.push((format!("blk.{i}.{n}.weight"), rows, cols));
        }
    }
    let mut tensors = Vec::with_capacity(specs.len() + 2 * s.layers + 1);
    for (k, (name, rows, cols)) in specs.into_iter().enumerate() {
        tensors.push((name, random_q8(k as u64 + 1, rows, cols)?));
    }
    let norms = (0..s.layers).flat_map(|i| [i].repeat(2).into_iter().zip(["attn", "ffn"]));
    let norms = norms.map(|(i, n)| format!("blk.{i}.{n}_norm.weight"));
    let ones = Tensor::ones(s.hidden, DType::F32, &Device::Cpu)?;
    for name in norms.chain(["output_norm.weight".to_owned()]) {
        tensors.push((name, QTensor::quantize(&ones, GgmlDType::F32)?));
    }
    let merges = LABELS.map(|l| format!("Ġ {l}")).to_vec();
    let strings = |v: Vec<String>| Value::Array(v.into_iter().map(Value::String).collect());
    let (u, text) = (|v| Value::U32(v as u32), |t: &str| Value::String(t.into()));
    let meta = [
        ("general.architecture", text("llama")),
        ("llama.vocab_size", u(s.vocab)),
        ("llama.context_length", u(4096)),
        ("llama.embedding_length", u(s.hidden)),
        ("llama.block_count", u(s.layers)),
        ("llama.feed_forward_length", u(s.ffn)),
        ("llama.attention.head_count", u(s.heads)),
        ("llama.attention.head_count_kv", u(s.kv_heads)),
        ("llama.rope.freq_base", Value::F32(s.rope_base)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", text("gpt2")),
        ("tokenizer.ggml.pre", text("smollm")),
        ("tokenizer.ggml.tokens", strings(vocabulary(s.vocab))),
        ("tokenizer.ggml.merges", strings(merges)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ];
    let meta: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).map_err(io(path))?);
    gguf_file::write(&mut w, &meta, &refs)?;
    w.flush().map_err(io(path))
}

/// A PEFT LoRA adapter: r=8, alpha 16 on q/v/up/down of every layer, both factors random.
fn write_adapter(s: &Shape, dir: &Path, member: usize) -> Result<()> {
    const TARGETS: [&str; 4] = ["q_proj", "v_proj", "up_proj", "down_proj"];
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let config = serde_json::json!({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK,
        "lora_alpha": 16, "target_modules": TARGETS, "lora_dropout": 0.0, "bias": "none",
        "use_rslora": false, "use_dora": false, "modules_to_save": null});
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).map_err(io(dir))?;
    let (mut rng, mut map) = (SplitMix(1000 + member as u64), HashMap::new());
    for i in 0..s.layers {
        for (_, module, out, inp) in s.projections() {
            if TARGETS.iter().any(|t| module.ends_with(t)) {
                let key = format!("base_model.model.model.layers.{i}.{module}");
                map.insert(format!("{key}.lora_A.weight"), rng.tensor(RANK, inp)?);
                map.insert(format!("{key}.lora_B.weight"), rng.tensor(out, RANK)?);
            }
        }
    }
    let path = dir.join("adapter_model.safetensors");
    Ok(candle_core::safetensors::save(&map, path)?)
}

/// One shape's files, removed on drop: the GGUF and the adapter directories.
struct Files {
    _dir: tempfile::TempDir,
    model: PathBuf,
    adapters: Vec<PathBuf>,
}

impl Files {
    fn write(s: &Shape, n_adapters: usize) -> Result<Self> {
        let t = Instant::now();
        let dir = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
        let model = dir.path().join("model.gguf");
        write_model(s, &model)?;
        let adapters: Vec<PathBuf> = (0..n_adapters)
            .map(|m| dir.path().join(format!("m{m}")))
            .collect();
        for (m, a) in adapters.iter().enumerate() {
            write_adapter(s, a, m)?;
        }
        let mib = std::fs::metadata(&model).map_err(io(&model))?.len() >> 20;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "\n## {s:?}\n{mib} MiB Q8_0 GGUF and {n_adapters} adapters written in {secs:.1} s"
        );
        Ok(Self {
            _dir: dir,
            model,
            adapters,
        })
    }

    fn load(&self, members: usize, dev: &Device) -> Result<Ensemble> {
        Ok(Ensemble::load(&self.model, &self.adapters[..members], dev)?)
    }
}

/// `n` label prompts of about 40 tokens (a token per byte; " A" is one token).
fn prompts(n: usize) -> Vec<String> {
    const WORDS: &str = "the cold river runs past a small town where people grow rice";
    let words: Vec<&str> = WORDS.split(' ').collect();
    let mut rng = SplitMix(7);
    let mut prompt = |i| {
        let mut p = format!("Question {i}:");
        while p.len() < 28 + i % 8 {
            p = format!("{p} {}", words[rng.next() as usize % words.len()]);
        }
        p + "\nAnswer:"
    };
    (0..n).map(&mut prompt).collect()
}

/// Each member's probabilities of the labels after each prompt, `(N, M, 4)` flat.
fn score(ens: &Ensemble, prompts: &[String]) -> Result<Vec<f32>> {
    let labels = [LABELS.map(String::from).to_vec()];
    let opts = ScoreOptions::default(); // 16 prompts a pass
    Ok(ens.score(prompts, &labels, &opts)?.reduced.member_probs)
}

/// Greedy decoding of `tokens` tokens after each prompt, all sequences in one batch: each
/// sequence's `(token, gap between the mixture's top-2 log-probabilities)`, and the seconds
/// the steps after the first (the one that also runs the prompts) took.
type Tokens = Vec<Vec<(u32, f32)>>;
fn decode(ens: &Ensemble, prompts: &[String], tokens: usize) -> Result<(Tokens, f64)> {
    let opts = GenerateOptions {
        max_new_tokens: tokens,
        top_logprobs: 2,
        ..Default::default()
    };
    let mut seqs = Vec::with_capacity(prompts.len());
    for p in prompts {
        seqs.push(ens.start(ens.encode_prompt(p)?, &opts)?);
    }
    let (mut out, mut first) = (vec![Vec::new(); seqs.len()], None);
    while seqs.iter().any(|d| !d.is_done()) {
        let mut refs: Vec<&mut Decoding> = seqs.iter_mut().collect();
        for (o, event) in out.iter_mut().zip(ens.step(&mut refs)?) {
            if let Some(t) = event.and_then(|e| e.token) {
                let gap = t.top.first().zip(t.top.get(1)).map(|(a, b)| a.1 - b.1);
                o.push((t.id, gap.unwrap_or(f32::INFINITY)));
            }
        }
        first.get_or_insert_with(Instant::now);
    }
    Ok((out, first.map_or(0.0, |t| t.elapsed().as_secs_f64())))
}

/// CUDA against CPU with `PARITY_MEMBERS` members; prints each check, returns the failures.
fn parity(files: &Files, cuda: &Device, prompts: &[String], tokens: usize) -> Result<Vec<String>> {
    let cpu = files.load(PARITY_MEMBERS, &Device::Cpu)?;
    let gpu = files.load(PARITY_MEMBERS, cuda)?;
    let (a, b) = (score(&cpu, &prompts[..4])?, score(&gpu, &prompts[..4])?);
    let diffs: Vec<f32> = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).collect();
    let diff = diffs.iter().copied().fold(0f32, f32::max);
    let ok = a.len() == b.len() && diffs.iter().all(|d| *d <= PROB_TOL); // NaN fails
    let (lo, hi) = a
        .iter()
        .fold((1f32, 0f32), |(l, h), &x| (l.min(x), h.max(x)));
    let verdict = if ok { "ok" } else { "FAILED" };
    println!(
        "  label probabilities of 4 prompts x {PARITY_MEMBERS} members x 4 labels (on cpu in [{lo:.3}, {hi:.3}]): max |cuda - cpu| = {diff:.2e}: {verdict}"
    );
    let mut failures = Vec::new();
    if !ok {
        failures.push(format!("label probabilities differ by {diff:.2e}"));
    }
    let (x, _) = decode(&cpu, &prompts[..2], tokens)?;
    let (y, _) = decode(&gpu, &prompts[..2], tokens)?;
    for (j, (x, y)) in x.iter().zip(&y).enumerate() {
        let ids = |v: &[(u32, f32)]| v.iter().map(|t| t.0).collect::<Vec<_>>();
        let (ids_x, ids_y) = (ids(x), ids(y));
        let at = ids_x.iter().zip(&ids_y).position(|(p, q)| p != q);
        let gap = at.map_or(f32::INFINITY, |k| x[k].1.min(y[k].1));
        let msg = if ids_x == ids_y {
            let min_gap = x.iter().map(|t| t.1).fold(f32::INFINITY, f32::min);
            let n = x.len();
            format!("{n} identical tokens (smallest top-2 gap {min_gap:.1e}): ok")
        } else if gap < NEAR_TIE {
            format!(
                "diverge at token {at:?} after a near tie (top-2 gap {gap:.1e}): reported, not failed"
            )
        } else {
            failures.push(format!("sequence {j}: cpu {ids_x:?}, cuda {ids_y:?}"));
            format!("cpu {ids_x:?} vs cuda {ids_y:?}: FAILED")
        };
        println!("  greedy decode of sequence {j}: {msg}");
    }
    Ok(failures)
}

/// One table row per M: load seconds, scoring questions/s, decode tokens/s per batch size.
fn bench(s: &Shape, files: &Files, dev: &Device, args: &Args, prompts: &[String]) -> Result<()> {
    let name = if dev.is_cpu() { "cpu" } else { "cuda" };
    for &m in &args.members {
        let t = Instant::now();
        let ens = files.load(m, dev)?;
        let load = t.elapsed().as_secs_f64();
        let mut row = format!("| {} | {name} | {m} | {load:.1} |", s.name);
        score(&ens, &prompts[..1])?; // warm-up: kernels loaded, weights paged in
        decode(&ens, &prompts[..1], 2)?;
        let t = Instant::now();
        score(&ens, prompts)?;
        row += &format!(" {:.2} |", prompts.len() as f64 / t.elapsed().as_secs_f64());
        for &b in &args.batches {
            let batch: Vec<String> = prompts.iter().cycle().take(b).cloned().collect();
            let (out, secs) = decode(&ens, &batch, args.tokens)?;
            let after_first: usize = out.iter().map(|o| o.len().saturating_sub(1)).sum();
            row += &format!(" {:.1} |", after_first as f64 / secs);
        }
        println!("{row}");
        std::io::stdout().flush().map_err(io(Path::new("stdout")))?;
    }
    Ok(())
}

fn run(args: &Args) -> Result<Vec<String>> {
    let mut devices = Vec::new();
    for d in &args.devices {
        if d == "cpu" {
            devices.push(Device::Cpu);
        } else if candle_core::utils::cuda_is_available() {
            let first_line = |e: candle_core::Error| e.to_string().lines().next().map(String::from);
            let cuda = Device::new_cuda(0)
                .map_err(|e| CheckError::Device(first_line(e).unwrap_or_default()));
            devices.push(cuda?);
        } else {
            println!("this build has no CUDA support (built without `--features cuda`): CPU only");
        }
    }
    if devices.is_empty() {
        devices.push(Device::Cpu);
    }
    let cuda = devices.iter().find(|d| d.is_cuda());
    let (prompts, mut failures) = (prompts(16), Vec::new());
    let n_adapters = PARITY_MEMBERS.max(args.members.iter().copied().max().unwrap_or(1));
    for s in &args.shapes {
        let files = Files::write(s, n_adapters)?;
        if let Some(dev) = cuda {
            println!("parity, cuda against cpu, M={PARITY_MEMBERS}:");
            let f = parity(&files, dev, &prompts, args.tokens)?;
            failures.extend(f.into_iter().map(|f| format!("{}: {f}", s.name)));
        } else {
            println!("parity: skipped (no CUDA device)");
        }
        let mut head = "| shape | device | M | load s | score q/s |".to_owned();
        for b in &args.batches {
            head += &format!(" decode tok/s b={b} |");
        }
        println!(
            "\nscore: 16 prompts of ~40 tokens in one call; decode: tokens/s of b sequences decoded \
             together, after the first step"
        );
        println!(
            "{head}\n|---|---|{}",
            "---:|".repeat(3 + args.batches.len())
        );
        for dev in &devices {
            bench(s, &files, dev, args, &prompts)?;
        }
    }
    Ok(failures)
}

fn main() -> ExitCode {
    match parse_args().and_then(|a| run(&a)) {
        Ok(f) if f.is_empty() => ExitCode::SUCCESS,
        Ok(f) => {
            eprintln!("\nparity FAILED:\n  {}", f.join("\n  "));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
