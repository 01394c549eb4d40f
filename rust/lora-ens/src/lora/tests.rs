//! Adapter and ensemble loading on hand-written PEFT files for a toy base config.
//! The parity with PEFT itself is in tests/test_lora_loading.py.

use std::path::Path;

use safetensors::{Dtype, tensor::TensorView};
use serde_json::json;

use super::*;
use crate::config::{Architecture, RopeScaling};

fn base() -> LlamaConfig {
    LlamaConfig {
        architecture: Architecture::Llama,
        vocab_size: 32,
        hidden: 8,
        n_layer: 2,
        n_head: 2,
        n_kv_head: 1,
        head_dim: 4,
        ffn: 12,
        rms_eps: 1e-5,
        rope_base: 10_000.0,
        rope_scaling: RopeScaling::None,
        context_length: 64,
        tied_embeddings: true,
    }
}

fn values(n: usize, seed: f32) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 + seed) * 0.77).sin()).collect()
}

/// Write a PEFT adapter: `config` merged over a default q/k/v/o config, and the tensors.
fn write_adapter(
    dir: &Path,
    config: serde_json::Value,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
) {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = json!({"peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "none",
                       "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]});
    for (k, v) in config.as_object().unwrap() {
        c[k] = v.clone();
    }
    std::fs::write(dir.join(CONFIG_FILE), c.to_string()).unwrap();
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            (
                name.clone(),
                TensorView::new(Dtype::F32, shape.clone(), b).unwrap(),
            )
        })
        .collect();
    let data = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join(WEIGHTS_FILE), data).unwrap();
}

/// A/B tensors of rank `r` for `targets` on every layer of [`base`].
fn lora_tensors(targets: &[Target], r: usize) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let c = base();
    let mut out = Vec::new();
    for layer in 0..c.n_layer {
        for (i, &t) in targets.iter().enumerate() {
            let (n_in, n_out) = t.dims(&c);
            let m = format!("base_model.model.{}", t.module_name(layer));
            let seed = (layer * 7 + i) as f32;
            out.push((
                format!("{m}.lora_A.weight"),
                vec![r, n_in],
                values(r * n_in, seed),
            ));
            out.push((
                format!("{m}.lora_B.weight"),
                vec![n_out, r],
                values(n_out * r, -seed),
            ));
        }
    }
    out
}

const ATTN: [Target; 4] = [Target::Q, Target::K, Target::V, Target::O];

/// [`load_adapters`] with the model's sha256 given up front (`None`: no check).
fn load(paths: &[std::path::PathBuf], sha: Option<&str>) -> Result<Vec<LoraAdapter>> {
    load_as(paths, sha.map(|s| BaseIdentity::new(s, None)))
}

/// [`load_adapters`] on a model of identity `have` (`None`: no check).
fn load_as(paths: &[std::path::PathBuf], have: Option<BaseIdentity>) -> Result<Vec<LoraAdapter>> {
    let given = || Ok(have.clone().unwrap_or_default());
    let check: Option<&dyn Fn() -> Result<BaseIdentity>> = have.is_some().then_some(&given);
    load_adapters(paths, &base(), check).map(|(adapters, _)| adapters)
}

fn adapter_reason(result: Result<impl std::fmt::Debug>) -> String {
    match result {
        Err(Error::Adapter { path, reason }) => format!("{}: {reason}", path.display()),
        other => panic!("expected an Adapter error, got {other:?}"),
    }
}

#[test]
fn loads_modules_with_scaling_and_permuted_qk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m0");
    let tensors = lora_tensors(&ATTN, 2);
    write_adapter(&dir, json!({}), &tensors);
    let a = LoraAdapter::load(&dir, &base()).unwrap();
    assert_eq!(a.name, "m0");
    assert_eq!(a.modules.len(), 8);
    assert_eq!(a.first_layer(), Some(0));
    let c = base();
    for (&(layer, target), m) in &a.modules {
        assert_eq!(m.scaling, 2.0);
        let (n_in, n_out) = target.dims(&c);
        assert_eq!((m.r, m.in_dim, m.out_dim), (2, n_in, n_out));
        let prefix = format!("base_model.model.{}", target.module_name(layer));
        let raw = |side: &str| {
            let name = format!("{prefix}.{side}.weight");
            tensors.iter().find(|t| t.0 == name).unwrap().2.clone()
        };
        assert_eq!(m.lora_a, raw("lora_A"));
        let want_b = match target {
            Target::Q => permute_qk_rows(&raw("lora_B"), 2, c.n_head).unwrap(),
            Target::K => permute_qk_rows(&raw("lora_B"), 2, c.n_kv_head).unwrap(),
            _ => raw("lora_B"),
        };
        assert_eq!(m.lora_b, want_b, "{target}");
    }
    // K has one KV head of head_dim 4: rows [0, 1, 2, 3] -> [0, 2, 1, 3].
    let k = a.module(0, Target::K).unwrap();
    let raw_b = values(4 * 2, -1.0);
    assert_eq!(&k.lora_b[2..4], &raw_b[4..6]);
    assert_eq!(k.delta().len(), 4 * 8);
}

#[test]
fn rank_pattern_and_layers_to_transform() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m1");
    let c = base();
    let m = |t: Target, r: usize| {
        let (n_in, n_out) = t.dims(&c);
        let name = t.module_name(1);
        vec![
            (
                format!("{name}.lora_A.default.weight"),
                vec![r, n_in],
                values(r * n_in, 1.0),
            ),
            (
                format!("{name}.lora_B.default.weight"),
                vec![n_out, r],
                values(n_out * r, 2.0),
            ),
        ]
    };
    let tensors = [m(Target::Up, 3), m(Target::Down, 1)].concat();
    let config = json!({"target_modules": ["up_proj", "down_proj"], "layers_to_transform": [1],
                        "rank_pattern": {"down_proj": 1}, "r": 3, "lora_alpha": 6,
                        "alpha_pattern": {"model.layers.1.mlp.down_proj": 5}});
    write_adapter(&dir, config, &tensors);
    let a = LoraAdapter::load(&dir, &base()).unwrap();
    let keys: Vec<_> = a.modules.keys().copied().collect();
    assert_eq!(keys, [(1, Target::Up), (1, Target::Down)]);
    assert_eq!(a.module(1, Target::Up).unwrap().scaling, 2.0);
    assert_eq!(a.module(1, Target::Down).unwrap().scaling, 5.0);
    assert_eq!(a.first_layer(), Some(1));
}

#[test]
fn refusals_name_file_tensor_and_expectation() {
    let tmp = tempfile::tempdir().unwrap();
    let good = lora_tensors(&ATTN, 2);
    let edit = |i: usize, shape: Vec<usize>, v: Vec<f32>| {
        let mut t = good.clone();
        t[i].1 = shape;
        t[i].2 = v;
        t
    };
    let mut nan = values(2 * 8, 0.0);
    nan[5] = f32::NAN;
    let cases: Vec<(&str, serde_json::Value, Vec<_>, &str)> = vec![
        (
            "shape",
            json!({}),
            edit(0, vec![2, 9], values(18, 0.0)),
            "lora_A of `model.layers.0.self_attn.q_proj` is [2, 9], expected [2, 8] (trained for another model?)",
        ),
        (
            "rank",
            json!({"r": 4}),
            good.clone(),
            "lora_A of `model.layers.0.self_attn.q_proj` is [2, 8], expected [4, 8] (r = 4 in adapter_config.json)",
        ),
        (
            "nan",
            json!({}),
            edit(0, vec![2, 8], nan),
            "holds a non-finite value (NaN at flat index 5)",
        ),
        (
            "untargeted",
            json!({"target_modules": ["q_proj", "k_proj", "v_proj"]}),
            good.clone(),
            "adapts `model.layers.0.self_attn.o_proj`, which adapter_config.json does not target",
        ),
        (
            "missing-module",
            json!({"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"]}),
            good.clone(),
            "no lora_A / lora_B for `model.layers.0.mlp.up_proj`",
        ),
        (
            "missing-b",
            json!({}),
            good[..good.len() - 1].to_vec(),
            "`model.layers.1.self_attn.o_proj` has no lora_B tensor",
        ),
        (
            "dora",
            json!({"use_dora": true}),
            good.clone(),
            "adapter_config.json: DoRA is not supported",
        ),
    ];
    for (name, config, tensors, want) in cases {
        let dir = tmp.path().join(name);
        write_adapter(&dir, config, &tensors);
        let got = adapter_reason(LoraAdapter::load(&dir, &base()));
        assert!(got.contains(want), "{name}: {got}");
        assert!(
            got.contains(name),
            "{name}: the message names the adapter: {got}"
        );
    }
    let mut deep = base();
    deep.n_layer = 1;
    let got = adapter_reason(LoraAdapter::load(&tmp.path().join("shape"), &deep));
    assert!(
        got.contains("layer 1 but the base model has 1 layers"),
        "{got}"
    );

    let dir = tmp.path().join("no-weights");
    write_adapter(&dir, json!({}), &good);
    std::fs::remove_file(dir.join(WEIGHTS_FILE)).unwrap();
    let got = adapter_reason(LoraAdapter::load(&dir, &base()));
    assert!(
        got.contains("adapter_model.safetensors: file is missing"),
        "{got}"
    );
    std::fs::write(dir.join(WEIGHTS_FILE), b"garbage").unwrap();
    let got = adapter_reason(LoraAdapter::load(&dir, &base()));
    assert!(got.contains("not a valid safetensors file"), "{got}");
    std::fs::write(dir.join(CONFIG_FILE), b"{\"peft_type\": ").unwrap();
    let got = adapter_reason(LoraAdapter::load(&dir, &base()));
    assert!(got.contains("adapter_config.json: malformed JSON"), "{got}");
    match LoraAdapter::load(&tmp.path().join("nowhere"), &base()) {
        Err(Error::Io { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("{other:?}"),
    }
}

#[test]
fn ensemble_manifest_members_and_base_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let ens = tmp.path().join("ens");
    for m in ["m0", "m1"] {
        write_adapter(&ens.join(m), json!({}), &lora_tensors(&ATTN, 2));
    }
    let sha = "ab".repeat(32);
    let manifest = json!({"members": ["m0", {"path": "m1"}], "labels": ["A", "B"],
                          "base_model": {"path": "base.gguf", "sha256": sha.to_uppercase()},
                          "metrics": {"acc": 0.5}});
    std::fs::write(ens.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    let single = tmp.path().join("single");
    let v_only = json!({"target_modules": ["v_proj"]});
    write_adapter(&single, v_only, &lora_tensors(&[Target::V], 2));

    let paths = [ens.clone(), single.clone()];
    let all = load(&paths, Some(&sha)).unwrap();
    let names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["m0", "m1", "single"]);
    let m = EnsembleManifest::load(&ens).unwrap();
    assert_eq!(
        m.labels.as_deref(),
        Some(&["A".to_owned(), "B".to_owned()][..])
    );
    assert_eq!(m.base_model_sha256.as_deref(), Some(sha.as_str()));
    assert!(m.extra.contains_key("metrics"));
    // Written again, it reads back the same (the unknown key kept).
    let again = EnsembleManifest::from_json(&m.to_json(), &m.path).unwrap();
    assert_eq!(again, m);
    assert!(load(&paths, None).is_ok());

    let other = "cd".repeat(32);
    let got = adapter_reason(load(&paths, Some(&other)));
    assert!(got.contains(&sha) && got.contains(&other), "{got}");

    std::fs::write(ens.join("m1").join(CONFIG_FILE), b"[").unwrap();
    let got = adapter_reason(load(&paths, None));
    assert!(
        got.contains("member 2 of 2") && got.contains("malformed JSON"),
        "{got}"
    );
    let manifest = json!({"members": ["m0", "m9"]});
    std::fs::write(ens.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    let got = adapter_reason(load(&paths, None));
    assert!(
        got.contains("m9: member 2 of 2") && got.contains("does not exist"),
        "{got}"
    );
    std::fs::write(ens.join(MANIFEST_FILE), json!({"members": []}).to_string()).unwrap();
    let got = adapter_reason(load(&paths, None));
    assert!(got.contains("non-empty list"), "{got}");
}

#[test]
fn members_trained_on_a_checkpoint_load_on_its_conversions_only() {
    let tmp = tempfile::tempdir().unwrap();
    let ens = tmp.path().join("ens");
    write_adapter(&ens.join("m0"), json!({}), &lora_tensors(&ATTN, 2));
    let ckpt = "c0".repeat(32);
    let manifest = json!({"members": ["m0"],
                          "base_model": {"path": "hf/", "checkpoint_sha256": ckpt.to_uppercase()}});
    std::fs::write(ens.join(MANIFEST_FILE), manifest.to_string()).unwrap();
    let m = EnsembleManifest::load(&ens).unwrap();
    assert_eq!(
        m.base_model_checkpoint_sha256.as_deref(),
        Some(ckpt.as_str())
    );
    assert_eq!(m.base_model_sha256, None);
    assert_eq!(
        EnsembleManifest::from_json(&m.to_json(), &m.path).unwrap(),
        m
    );
    let paths = [ens.clone()];

    // Any GGUF converted from the checkpoint (whatever its own sha256) is accepted.
    for file in ["aa", "bb"] {
        let q = BaseIdentity::new(&file.repeat(32), Some(&ckpt));
        assert_eq!(load_as(&paths, Some(q)).unwrap().len(), 1);
    }
    // Another checkpoint's conversion, or a GGUF with no recorded source, is refused, both
    // identities named.
    let other = "d1".repeat(32);
    let file = "ee".repeat(32);
    for have in [
        BaseIdentity::new(&file, Some(&other)),
        BaseIdentity::new(&file, None),
    ] {
        let got = adapter_reason(load_as(&paths, Some(have.clone())));
        assert!(got.contains(&ckpt) && got.contains(&file), "{got}");
        assert!(got.contains(ALLOW_BASE_MISMATCH_ENV), "{got}");
        if let Some(src) = &have.source_sha256 {
            assert!(got.contains(src.as_str()), "{got}");
        }
        // The explicit override accepts it.
        assert!(m.check_base_with(&have, true).is_ok());
        assert!(m.check_base_with(&have, false).is_err());
    }

    // Members trained on a GGUF accept that file only, not another conversion of its source.
    let gguf = "ab".repeat(32);
    let on_file = json!({"members": ["m0"], "base_model": {"sha256": gguf}});
    std::fs::write(ens.join(MANIFEST_FILE), on_file.to_string()).unwrap();
    assert!(load_as(&paths, Some(BaseIdentity::new(&gguf, Some(&ckpt)))).is_ok());
    let got = adapter_reason(load_as(&paths, Some(BaseIdentity::new(&file, Some(&ckpt)))));
    assert!(got.contains(&gguf) && got.contains(&file), "{got}");

    let bad = json!({"members": ["m0"], "base_model": {"checkpoint_sha256": "xyz"}});
    std::fs::write(ens.join(MANIFEST_FILE), bad.to_string()).unwrap();
    let got = adapter_reason(EnsembleManifest::load(&ens));
    assert!(
        got.contains("`base_model.checkpoint_sha256` `xyz`"),
        "{got}"
    );
}

#[test]
fn manifest_template_and_scoring_are_checked() {
    let file = Path::new("ens/ensemble.json");
    let parse = |v: serde_json::Value| EnsembleManifest::from_json(&v.to_string(), file);
    let m = parse(json!({"members": ["m0"], "prompt_template": "qa-v1",
                         "scoring": {"mode": "labels", "normalization": "per_byte"}}))
    .unwrap();
    assert_eq!(m.prompt_template.as_deref(), Some("qa-v1"));
    let s = m.scoring.unwrap();
    assert_eq!(s.mode, Some(crate::questions::Scoring::Labels));
    assert_eq!(s.normalization, Some(crate::score::Normalization::PerByte));
    let got = adapter_reason(parse(
        json!({"members": ["m0"], "prompt_template": "qa-v9"}),
    ));
    assert!(got.contains("qa-v9") && got.contains("qa-v1"), "{got}");
    let got = adapter_reason(parse(
        json!({"members": ["m0"], "scoring": {"mode": "vibes"}}),
    ));
    assert!(
        got.contains("scoring.mode") && got.contains("vibes"),
        "{got}"
    );
    let got = adapter_reason(parse(json!({"members": ["m0"], "seeds": [-1]})));
    assert!(got.contains("seeds"), "{got}");
}

#[test]
fn members_must_live_inside_the_ensemble_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let ens = tmp.path().join("ens");
    write_adapter(&ens.join("m0"), json!({}), &lora_tensors(&ATTN, 2));
    write_adapter(
        &ens.join("sub").join("m1"),
        json!({}),
        &lora_tensors(&ATTN, 2),
    );
    let outside = tmp.path().join("elsewhere");
    write_adapter(&outside, json!({}), &lora_tensors(&ATTN, 2));
    let manifest = |members: serde_json::Value| {
        let text = json!({ "members": members }).to_string();
        EnsembleManifest::from_json(&text, &ens.join(MANIFEST_FILE)).unwrap()
    };
    // Inside, also through `..` that stays inside.
    let ok = manifest(json!(["m0", "sub/../sub/m1"]));
    assert_eq!(ok.load_members_with(&base(), false).unwrap().len(), 2);
    // Out through `..`, an absolute path and a symbolic link: refused, naming the member.
    let abs = outside.to_str().unwrap().to_owned();
    let mut cases = vec![json!(["m0", "../elsewhere"]), json!([abs])];
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(&outside, ens.join("link")).unwrap();
        cases.push(json!(["link"]));
    }
    for members in cases {
        let m = manifest(members.clone());
        let got = adapter_reason(m.load_members_with(&base(), false));
        assert!(
            got.contains("outside the ensemble directory")
                && got.contains(ALLOW_OUTSIDE_MEMBERS_ENV),
            "{members}: {got}"
        );
        // The explicit opt-in loads it.
        assert!(m.load_members_with(&base(), true).is_ok(), "{members}");
    }
}
