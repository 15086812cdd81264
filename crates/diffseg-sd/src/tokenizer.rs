//! CLIP's byte-level BPE tokenizer, read from a diffusers `tokenizer/` folder
//! (`vocab.json` + `merges.txt`), giving the text encoder's 77 token ids as SD
//! pipelines compute them.
//!
//! The tokenizer is assembled from the `tokenizers` library exactly as
//! transformers' `CLIPTokenizer` assembles it (normalizer, pre-tokenizer, BPE
//! with the `</w>` end-of-word mark, the two special tokens), so both give the
//! same ids; `tests/tokenizer.rs` checks this on a few hundred strings.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, Model, SplitDelimiterBehavior, Tokenizer};

use crate::clip::MAX_TOKENS;
use crate::Error;

/// The files a tokenizer folder must hold, as diffusers saves them.
pub const TOKENIZER_FILES: [&str; 2] = ["vocab.json", "merges.txt"];
/// Optional settings file; its `pad_token` picks the padding token (SD 1.x pads
/// with `<|endoftext|>`, SD 2.x with `!`).
const CONFIG_FILE: &str = "tokenizer_config.json";
/// Start of text, as transformers names it in CLIP's vocabulary.
const BOS_TOKEN: &str = "<|startoftext|>";
/// End of text; also the unknown token, and the padding unless the config says otherwise.
const EOS_TOKEN: &str = "<|endoftext|>";
/// Largest tokenizer file read (CLIP's `vocab.json` is 1.6 MB): a bound on memory for
/// a file named by a user.
const MAX_FILE_BYTES: u64 = 64 << 20;
/// transformers' CLIP pre-tokenizer split: the special tokens, English contractions,
/// runs of letters, single digits, runs of other non-space characters.
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// CLIP's BPE tokenizer with SD's prompt layout: BOS, the text's tokens (at most
/// 75), EOS, then padding to 77.
#[derive(Clone)]
pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    folder: PathBuf,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("folder", &self.folder)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("pad", &self.pad)
            .finish()
    }
}

impl ClipTokenizer {
    /// Reads a diffusers `tokenizer/` folder: `vocab.json`, `merges.txt` and, if
    /// present, `tokenizer_config.json` (for its `pad_token`).
    ///
    /// A folder lacking either file is [`Error::MissingTokenizer`], naming the
    /// folder and the missing files; unreadable or inconsistent files are
    /// [`Error::BadTokenizer`].
    pub fn from_folder(folder: impl AsRef<Path>) -> Result<Self, Error> {
        let folder = folder.as_ref();
        let missing: Vec<String> = TOKENIZER_FILES
            .iter()
            .filter(|name| !folder.join(name).is_file())
            .map(|name| name.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::MissingTokenizer {
                folder: folder.to_path_buf(),
                missing,
            });
        }
        let [vocab, merges] = TOKENIZER_FILES.map(|name| folder.join(name));
        for file in [&vocab, &merges] {
            check_size(file)?;
        }
        let bad = |path: &Path, reason: String| Error::BadTokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let pad_token = read_pad_token(folder)?;

        let (vocab_str, merges_str) = (vocab.to_string_lossy(), merges.to_string_lossy());
        let bpe = BPE::from_file(&vocab_str, &merges_str)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".into())
            .unk_token(EOS_TOKEN.into())
            .build()
            .map_err(|error| bad(folder, format!("vocab.json or merges.txt: {error}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")
            .map_err(|error| bad(folder, format!("normalizer: {error}")))?;
        tokenizer.with_normalizer(Some(Normalizers::new(vec![
            NFC.into(),
            whitespace.into(),
            Lowercase.into(),
        ])));
        let split = Split::new(
            SplitPattern::Regex(SPLIT_PATTERN.into()),
            SplitDelimiterBehavior::Removed,
            true,
        )
        .map_err(|error| bad(folder, format!("pre-tokenizer: {error}")))?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            split.into(),
            ByteLevel::default().add_prefix_space(false).into(),
        ])));
        tokenizer.add_special_tokens(&[
            AddedToken::from(BOS_TOKEN, true),
            AddedToken::from(EOS_TOKEN, true),
        ]);

        // From the BPE's own vocabulary: the special tokens added above would get new ids.
        let id = |token: &str| {
            tokenizer
                .get_model()
                .token_to_id(token)
                .ok_or_else(|| bad(&vocab, format!("has no `{token}` token")))
        };
        let (bos, eos, pad) = (id(BOS_TOKEN)?, id(EOS_TOKEN)?, id(&pad_token)?);
        Ok(Self {
            tokenizer,
            folder: folder.to_path_buf(),
            bos,
            eos,
            pad,
        })
    }

    /// The folder the tokenizer was read from.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// Start-of-text id (49406 in CLIP's vocabulary).
    pub fn bos_id(&self) -> u32 {
        self.bos
    }

    /// End-of-text id (49407 in CLIP's vocabulary).
    pub fn eos_id(&self) -> u32 {
        self.eos
    }

    /// Padding id (the end-of-text id for SD 1.x).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// The text's token ids, without BOS, EOS or truncation: one vocabulary entry's
    /// columns once placed in a prompt.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.tokenizer
            .encode(text, false)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|error| Error::BadTokenizer {
                path: self.folder.clone(),
                reason: format!("could not tokenize {text:?}: {error}"),
            })
    }

    /// The text as SD pipelines feed it to the text encoder (diffusers' call,
    /// `padding="max_length", max_length=77, truncation=True`): BOS, the first 75
    /// tokens, EOS, then padding.
    pub fn prompt_ids(&self, text: &str) -> Result<[i64; MAX_TOKENS], Error> {
        let tokens = self.token_ids(text)?;
        Ok(self.prompt_from_tokens(&tokens))
    }

    /// The empty prompt's ids, the conditioning DiffSeg's pass uses (method section 2).
    pub fn empty_prompt_ids(&self) -> [i64; MAX_TOKENS] {
        self.prompt_from_tokens(&[])
    }

    /// A prompt of these tokens: BOS, `tokens` cut to the 75 that fit, EOS,
    /// padding (e.g. several vocabulary entries' tokens one after another).
    pub fn prompt_from_tokens(&self, tokens: &[u32]) -> [i64; MAX_TOKENS] {
        let mut ids = [i64::from(self.pad); MAX_TOKENS];
        let kept = tokens.len().min(MAX_TOKENS - 2);
        ids[0] = i64::from(self.bos);
        for (slot, &token) in ids[1..=kept].iter_mut().zip(tokens) {
            *slot = i64::from(token);
        }
        ids[kept + 1] = i64::from(self.eos);
        ids
    }
}

/// Refuses a file too large to be a tokenizer file before reading it.
fn check_size(path: &Path) -> Result<(), Error> {
    let length = std::fs::metadata(path)
        .map_err(|error| Error::Io {
            path: path.to_path_buf(),
            error,
        })?
        .len();
    if length > MAX_FILE_BYTES {
        return Err(Error::BadTokenizer {
            path: path.to_path_buf(),
            reason: format!("{length} bytes, more than the {MAX_FILE_BYTES} read"),
        });
    }
    Ok(())
}

/// `pad_token` as transformers' configs write it: a string, or an added-token object.
#[derive(Deserialize)]
#[serde(untagged)]
enum TokenSetting {
    Plain(String),
    Added { content: String },
}

#[derive(Deserialize)]
struct TokenizerConfig {
    pad_token: Option<TokenSetting>,
}

/// The padding token named by `tokenizer_config.json`, or `<|endoftext|>` without one.
fn read_pad_token(folder: &Path) -> Result<String, Error> {
    let path = folder.join(CONFIG_FILE);
    if !path.is_file() {
        return Ok(EOS_TOKEN.into());
    }
    check_size(&path)?;
    let config: TokenizerConfig = crate::config::read_json(&path)?;
    Ok(match config.pad_token {
        Some(TokenSetting::Plain(token) | TokenSetting::Added { content: token }) => token,
        None => EOS_TOKEN.into(),
    })
}
