//! The options that several subcommands share (`--model`, `--adapters`, `--device`, ...),
//! defined once: clap builds them from [`SHARED`] here, and the Python subcommands (`train`,
//! `eval`, `experiment`) build their argparse options from the same table through
//! `lora_ens_rs._core.cli_option_specs()`. A field takes a spec with `#[arg(spec = &MODEL)]`.
//! Test: `cargo test -p lora-ens-cli options` and `pytest tests/test_cli_options.py`.

use clap::Arg;
use clap::ArgAction;
use clap::builder::PossibleValuesParser;
use lora_ens::data::Format;

/// The type of an option's value, and so the Rust field type it parses into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file or directory path (`PathBuf`; Python: `str`).
    Path,
    /// Text, one of `choices` when there are any (`String`).
    Text,
    /// An integer of at least `min` (`u64`; Python: `int`).
    Int,
}

impl Kind {
    /// The name the Python side sees.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Path => "path",
            Kind::Text => "str",
            Kind::Int => "int",
        }
    }
}

/// One shared option: everything a parser needs to define it.
#[derive(Debug, Clone, Copy)]
pub struct OptionSpec {
    /// The long flag without its dashes (`batch-size`); the value's key is the same with `_`.
    pub name: &'static str,
    /// The placeholder in usage lines (`PATH`, `N`).
    pub value_name: &'static str,
    /// One-line help, without the default.
    pub help: &'static str,
    /// The value's type.
    pub kind: Kind,
    /// The accepted values (empty: any).
    pub choices: &'static [&'static str],
    /// The value when the flag is absent, as text (`None`: absent, or see `default_help`).
    pub default: Option<&'static str>,
    /// What happens when the flag is absent, when that is not one fixed value.
    pub default_help: Option<&'static str>,
    /// The smallest value an [`Kind::Int`] option takes.
    pub min: Option<u64>,
    /// The flag may be given several times; the values are collected in order.
    pub repeatable: bool,
}

impl OptionSpec {
    const fn new(name: &'static str, value_name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            value_name,
            help,
            kind: Kind::Text,
            choices: &[],
            default: None,
            default_help: None,
            min: None,
            repeatable: false,
        }
    }

    /// The help text with the default when it is not a fixed value (clap shows a fixed one
    /// as `[default: ...]`, argparse through the Python helper).
    pub fn full_help(&self) -> String {
        match self.default_help {
            Some(d) => format!("{} (default: {d})", self.help),
            None => self.help.to_owned(),
        }
    }

    /// The attribute key of the parsed value (`batch_size`).
    pub fn key(&self) -> String {
        self.name.replace('-', "_")
    }
}

/// GGUF base model.
pub const MODEL: OptionSpec = OptionSpec {
    kind: Kind::Path,
    default_help: Some("the default model, fetched on first use"),
    ..OptionSpec::new("model", "PATH", "GGUF model file")
};

/// Ensemble or adapter directories.
pub const ADAPTERS: OptionSpec = OptionSpec {
    kind: Kind::Path,
    repeatable: true,
    ..OptionSpec::new(
        "adapters",
        "DIR",
        "An ensemble directory (with `ensemble.json`) or one PEFT adapter directory; repeat \
         the flag for several (`--adapters ens --adapters extra-member`). None: the base \
         model alone",
    )
};

/// The compute device.
pub const DEVICE: OptionSpec = OptionSpec {
    default: Some("cpu"),
    ..OptionSpec::new("device", "DEVICE", "`cpu` or `cuda:N` (CUDA builds only)")
};

/// Kernel threads.
pub const THREADS: OptionSpec = OptionSpec {
    kind: Kind::Int,
    min: Some(1),
    default_help: Some("one per core"),
    ..OptionSpec::new("threads", "N", "Threads for the model's kernels")
};

/// Label or choice scoring.
pub const SCORING: OptionSpec = OptionSpec {
    choices: &["labels", "choices"],
    default_help: Some("the ensemble manifest's `scoring.mode`, else `choices`"),
    ..OptionSpec::new(
        "scoring",
        "MODE",
        "`labels`: score the label after a lettered prompt; `choices`: score each answer text",
    )
};

/// How choice scoring normalises an answer's log-likelihood.
pub const NORMALIZATION: OptionSpec = OptionSpec {
    choices: &["sum", "per_token", "per_byte"],
    default_help: Some("the ensemble manifest's `scoring.normalization`, else `per_token`"),
    ..OptionSpec::new(
        "normalization",
        "NORM",
        "How `choices` scoring normalizes an answer's log-likelihood",
    )
};

/// Questions per scoring pass.
pub const BATCH_SIZE: OptionSpec = OptionSpec {
    kind: Kind::Int,
    min: Some(1),
    default: Some("16"),
    ..OptionSpec::new(
        "batch-size",
        "N",
        "Questions per forward pass of the base model alone; with M members a pass takes \
         max(1, 2 * batch-size / M) of them, so memory stays near the base model's",
    )
};

/// Read only the first N questions.
pub const LIMIT: OptionSpec = OptionSpec {
    kind: Kind::Int,
    min: Some(1),
    ..OptionSpec::new(
        "limit",
        "N",
        "Read only the first N questions of each question file",
    )
};

/// The questions file's format.
pub const FORMAT: OptionSpec = OptionSpec {
    choices: Format::NAMES,
    default_help: Some("detected from the name and the first record"),
    ..OptionSpec::new("format", "FORMAT", "The question file's format")
};

/// Every shared option, in the order `--help` lists them.
pub const SHARED: &[OptionSpec] = &[
    MODEL,
    ADAPTERS,
    DEVICE,
    THREADS,
    SCORING,
    NORMALIZATION,
    BATCH_SIZE,
    LIMIT,
    FORMAT,
];

/// The shared option called `name`.
pub fn spec(name: &str) -> Option<&'static OptionSpec> {
    SHARED.iter().find(|s| s.name == name)
}

/// `#[arg(long, spec = &MODEL)]`: clap's derive calls this on the field's `Arg` after
/// setting the value parser it infers from the field's type, which must be the one [`Kind`]
/// names (in `Option` or `Vec` as usual). A field of an enum type (`#[arg(value_enum)]`)
/// keeps its own parser, whose values the tests hold equal to the spec's `choices`.
pub trait ArgSpec {
    /// The argument defined by `spec`.
    fn spec(self, spec: &OptionSpec) -> Self;
}

impl ArgSpec for Arg {
    fn spec(self, spec: &OptionSpec) -> Self {
        let mut arg = self
            .long(spec.name)
            .value_name(spec.value_name)
            .help(spec.full_help())
            .required(false);
        arg = match spec.kind {
            Kind::Path => arg.value_parser(clap::value_parser!(std::path::PathBuf)),
            // A negative value is a value out of range (named as such), not an unknown flag.
            Kind::Int => arg
                .value_parser(clap::value_parser!(u64).range(spec.min.unwrap_or(0)..))
                .allow_negative_numbers(true),
            Kind::Text if spec.choices.is_empty() => arg.value_parser(clap::value_parser!(String)),
            Kind::Text if arg.get_value_parser().possible_values().is_some() => arg,
            Kind::Text => arg.value_parser(PossibleValuesParser::new(spec.choices)),
        };
        if spec.repeatable {
            arg = arg.action(ArgAction::Append);
        }
        if let Some(default) = spec.default {
            arg = arg.default_value(default);
        }
        arg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_defaults_parse() {
        for (i, s) in SHARED.iter().enumerate() {
            assert!(SHARED[..i].iter().all(|t| t.name != s.name), "{}", s.name);
            if let (Some(d), Kind::Int) = (s.default, s.kind) {
                let v: u64 = d.parse().unwrap();
                assert!(v >= s.min.unwrap_or(0), "{}", s.name);
            }
            if let Some(d) = s.default.filter(|_| !s.choices.is_empty()) {
                assert!(s.choices.contains(&d), "{}", s.name);
            }
            assert!(s.choices.is_empty() || s.kind == Kind::Text, "{}", s.name);
        }
        assert_eq!(spec("batch-size").unwrap().key(), "batch_size");
        assert!(spec("out").is_none());
    }

    #[test]
    fn the_default_note_follows_the_help() {
        assert_eq!(
            THREADS.full_help(),
            "Threads for the model's kernels (default: one per core)"
        );
        assert_eq!(DEVICE.full_help(), DEVICE.help);
    }
}
