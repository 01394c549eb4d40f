//! `adapter_config.json` parsing, PEFT-style module matching and refusals.

use super::*;

fn parse(json: &str) -> Result<AdapterConfig> {
    AdapterConfig::from_json(json, Path::new("adapter_config.json"))
}

fn reason(json: &str) -> String {
    match parse(json) {
        Err(Error::Adapter { reason, .. }) => reason,
        other => panic!("expected an Adapter error, got {other:?}"),
    }
}

const Q: &str = "model.layers.3.self_attn.q_proj";

#[test]
fn patterns_match_like_peft_in_file_order() {
    let c = parse(
        r#"{"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"],
            "rank_pattern": {"layers.3.self_attn.q_proj": 4, "q_proj": 2},
            "alpha_pattern": {"v_proj": 3.5}}"#,
    )
    .unwrap();
    assert_eq!(c.rank_for(Q), 4);
    assert_eq!(c.rank_for("model.layers.0.self_attn.q_proj"), 2);
    assert_eq!(c.rank_for("model.layers.0.self_attn.v_proj"), 8);
    assert_eq!(c.alpha_for("model.layers.0.self_attn.v_proj"), 3.5);
    assert_eq!(c.scaling_for(Q), 4.0);
    // `(.*\.)?key$`: a partial segment does not match.
    assert_eq!(c.rank_for("model.layers.0.self_attn.xq_proj"), 8);
}

#[test]
fn rslora_and_layers_to_transform() {
    let c = parse(
        r#"{"peft_type": "LORA", "r": 16, "lora_alpha": 8, "use_rslora": true,
            "target_modules": ["q_proj", "model.layers.0.mlp.down_proj"], "layers_to_transform": [1]}"#,
    )
    .unwrap();
    assert_eq!(c.scaling_for(Q), 2.0);
    assert!(c.targets("model.layers.1.self_attn.q_proj", 1));
    assert!(!c.targets("model.layers.0.self_attn.q_proj", 0));
    // An exact full name bypasses the layer filter, as in PEFT.
    assert!(c.targets("model.layers.0.mlp.down_proj", 0));
    assert!(!c.targets("model.layers.1.mlp.down_proj", 1));
}

#[test]
fn regex_targets_fullmatch() {
    let c = parse(
        r#"{"peft_type": "LORA", "r": 4, "target_modules": ".*\\.1\\..*(k_proj|o_proj)",
            "exclude_modules": ["o_proj"]}"#,
    )
    .unwrap();
    assert!(c.targets("model.layers.1.self_attn.k_proj", 1));
    assert!(!c.targets("model.layers.0.self_attn.k_proj", 0));
    assert!(!c.targets("model.layers.1.self_attn.o_proj", 1));
    assert!(c.check_targets(Path::new("x"), 2).is_ok());
    let none = parse(r#"{"peft_type": "LORA", "r": 4, "target_modules": "nothing"}"#).unwrap();
    assert!(none.check_targets(Path::new("x"), 2).is_err());
}

#[test]
fn refusals_name_the_feature() {
    let base = r#""peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]"#;
    let cases = [
        (r#""use_dora": true"#, "DoRA is not supported"),
        (r#""bias": "all""#, "bias = \"all\" is not supported"),
        (r#""modules_to_save": ["score"]"#, "modules_to_save"),
        (r#""fan_in_fan_out": true"#, "fan_in_fan_out"),
        (r#""lora_bias": true"#, "lora_bias"),
        (
            r#""alora_invocation_tokens": [1, 2]"#,
            "variant `alora_invocation_tokens`",
        ),
    ];
    for (extra, want) in cases {
        let got = reason(&format!("{{{base}, {extra}}}"));
        assert!(got.contains(want), "{extra}: {got}");
    }
    assert!(reason("{not json").contains("malformed JSON"));
    assert!(reason(r#"{"peft_type": "IA3", "r": 4}"#).contains("peft_type `IA3`"));
    assert!(reason(r#"{"peft_type": "LORA", "r": 0, "target_modules": []}"#).contains("`r`"));
    for (targets, want) in [
        (r#"["q_proj", "lm_head"]"#, "lm_head"),
        (r#"["embed_tokens"]"#, "embed_tokens"),
        (r#"["q_proj", "c_attn"]"#, "unknown target module `c_attn`"),
        (r#"".*""#, "matches `model.embed_tokens`"),
    ] {
        let c = parse(&format!(
            r#"{{"peft_type": "LORA", "r": 4, "target_modules": {targets}}}"#
        ))
        .unwrap();
        match c.check_targets(Path::new("x"), 2) {
            Err(Error::Adapter { reason, .. }) => assert!(reason.contains(want), "{reason}"),
            other => panic!("{targets}: {other:?}"),
        }
    }
}
