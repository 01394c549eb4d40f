//! `lora-ens-rs generate "prompt"`: continue a prompt with the ensemble (the members'
//! next-token distributions averaged; greedy, or sampled with temperature / top-p and a seed)
//! and print the text. With `--uncertainty`, a table of the ensemble's uncertainty at each
//! generated token follows the text.
//! Test: `cargo test -p lora-ens-cli --test generate` and `pytest tests/test_cli.py`.

use clap::Args;
use lora_ens::Result;
use lora_ens::Tokenizer;
use lora_ens::generate::{GenerateOptions, Generation};

use crate::{Context, ModelArgs};

/// Arguments of `generate`.
#[derive(Debug, Clone, Args)]
#[command(
    after_help = "Output: the generated text and a newline. With --uncertainty, then a \
    blank line and a table with a header and one row per generated token, columns separated \
    by two or more spaces: `token` (the token's text as a JSON string), `p` (the ensemble's \
    probability of that token), `entropy` (of the ensemble's next-token distribution, in \
    nats) and `mi` (mutual information: the members' disagreement, in nats)."
)]
pub struct GenerateArgs {
    /// The prompt text (with --chat: the user's message).
    pub prompt: String,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    pub chat: bool,
    /// The most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Sampling temperature; 0 decodes greedily (the most probable token each step).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling: sample among the most probable tokens holding this much mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampler (the same seed gives the same text).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when the text contains this string (left out of the output); repeatable.
    #[arg(long, value_name = "STRING")]
    pub stop: Vec<String>,
    /// After the text, print a table of each generated token's probability, entropy and
    /// mutual information.
    #[arg(long)]
    pub uncertainty: bool,
}

/// Run `generate`.
pub fn run(args: &GenerateArgs, ctx: &Context) -> Result<()> {
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_p: args.top_p,
        seed: args.seed,
        stop: args.stop.clone(),
        top_logprobs: 0,
    };
    // The device is checked before the default model is fetched.
    let device = args.model.device()?;
    let ens = args.model.load(&device, ctx, &|msg| eprintln!("{msg}"))?;
    let generation = ens.generate(&args.prompt, args.chat, &opts)?;
    let mut out = format!("{}\n", generation.text);
    if args.uncertainty {
        out.push('\n');
        out.push_str(&uncertainty_table(&generation, ens.tokenizer())?);
    }
    print!("{out}");
    Ok(())
}

/// The `--uncertainty` table: a header and one row per generated token.
pub fn uncertainty_table(g: &Generation, tok: &Tokenizer) -> Result<String> {
    let tokens = g
        .tokens
        .iter()
        .map(|&id| {
            let text = tok.decode(&[id], false)?;
            Ok(serde_json::to_string(&text).unwrap_or_else(|_| format!("{text:?}")))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(format_table(
        &tokens,
        &g.probs,
        &g.entropy,
        &g.mutual_information,
    ))
}

/// Left-aligned token column, numbers with 4 decimals.
fn format_table(tokens: &[String], p: &[f32], entropy: &[f32], mi: &[f32]) -> String {
    let width = tokens
        .iter()
        .map(|t| t.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut table = format!("{:<width$}  {:<6}  {:<7}  mi\n", "token", "p", "entropy");
    for (i, t) in tokens.iter().enumerate() {
        table.push_str(&format!(
            "{t:<width$}  {:<6.4}  {:<7.4}  {:.4}\n",
            p[i], entropy[i], mi[i]
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_aligns_its_columns() {
        let tokens = ["\" sun\"".to_owned(), "\"\\n\"".to_owned()];
        let table = format_table(&tokens, &[0.5, 0.25], &[1.0, 2.5], &[0.0, 0.125]);
        assert_eq!(
            table,
            "token   p       entropy  mi\n\
             \" sun\"  0.5000  1.0000   0.0000\n\
             \"\\n\"    0.2500  2.5000   0.1250\n"
        );
    }
}
