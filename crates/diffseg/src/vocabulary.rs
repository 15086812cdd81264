//! The names segments can be given (issue 20): a list of entries, read from a
//! comma-separated string, a file or a preset, put through a prompt template,
//! tokenized with the model's CLIP tokenizer and packed into 77-token prompts
//! for the text encoder.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use diffseg_sd::{ClipTokenizer, MAX_TOKENS};

use crate::eval::Dataset;

/// Most entries a vocabulary holds (each costs token columns in the text
/// encoder's prompts and one score per segment).
pub const MAX_ENTRIES: usize = 4096;
/// Longest entry, in bytes, before the template is applied.
pub const MAX_ENTRY_BYTES: usize = 256;
/// Longest template, in bytes.
pub const MAX_TEMPLATE_BYTES: usize = 256;
/// Largest vocabulary file read: every entry at its longest, with its line break.
const MAX_FILE_BYTES: u64 = (MAX_ENTRIES * (MAX_ENTRY_BYTES + 2)) as u64;
/// Where a template puts the entry.
const PLACEHOLDER: &str = "{}";
/// Token columns of a prompt between BOS and EOS.
const PROMPT_COLUMNS: usize = MAX_TOKENS - 2;

/// Why a vocabulary was refused or could not be tokenized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VocabularyError {
    /// No entry left after dropping blank ones.
    #[error("{source_name}: the vocabulary has no entry")]
    Empty {
        /// Where the entries came from (a file, or `--vocabulary`).
        source_name: String,
    },
    /// More entries than [`MAX_ENTRIES`].
    #[error("{source_name}: {count} vocabulary entries, more than the {MAX_ENTRIES} allowed")]
    TooManyEntries {
        /// Where the entries came from.
        source_name: String,
        /// How many there are.
        count: usize,
    },
    /// An entry longer than [`MAX_ENTRY_BYTES`].
    #[error("{source_name}: vocabulary entry {index} is {bytes} bytes long, more than the {MAX_ENTRY_BYTES} allowed")]
    EntryTooLong {
        /// Where the entries came from.
        source_name: String,
        /// The entry's position, from 0.
        index: usize,
        /// Its length in bytes.
        bytes: usize,
    },
    /// The same entry twice (compared without case, as CLIP's tokenizer lowercases).
    #[error("{source_name}: vocabulary entry {entry:?} is given twice (entries {first} and {second}); each name must be distinct")]
    Duplicate {
        /// Where the entries came from.
        source_name: String,
        /// The repeated entry (its second spelling).
        entry: String,
        /// Position of its first occurrence, from 0.
        first: usize,
        /// Position of the repeat.
        second: usize,
    },
    /// A template without exactly one `{}`, or too long.
    #[error("prompt template {template:?}: {reason}")]
    BadTemplate {
        /// The template.
        template: String,
        /// What is wrong, e.g. `has no {}`.
        reason: String,
    },
    /// The vocabulary file could not be read.
    #[error("{}: cannot read the vocabulary file: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The vocabulary file is too large or not UTF-8 text.
    #[error("{}: not a vocabulary file: {reason}", path.display())]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An entry's prompt has more tokens than one prompt holds, or none.
    #[error("vocabulary entry {entry:?}: its prompt {prompt:?} is {tokens} tokens; it must be 1 to {PROMPT_COLUMNS}")]
    EntryTokens {
        /// The entry.
        entry: String,
        /// The entry through the template.
        prompt: String,
        /// Its token count.
        tokens: usize,
    },
    /// The template's text merges with the entry's into shared tokens, so the
    /// entry has no token columns of its own.
    #[error("vocabulary entry {entry:?}: the template {template:?} merges it with its neighbouring text into shared tokens; put spaces around {{}}")]
    TemplateMergesEntry {
        /// The entry.
        entry: String,
        /// The template.
        template: String,
    },
    /// The tokenizer failed.
    #[error(transparent)]
    Tokenizer(#[from] diffseg_sd::Error),
}

/// A vocabulary preset: an evaluation dataset's 27 class names, as the
/// evaluation names them ([`Dataset::class_names`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum VocabularyPreset {
    /// `coco-stuff-27`: COCO-Stuff's 27 coarse classes.
    CocoStuff27,
    /// `cityscapes-27`: the 27 Cityscapes classes with label ids 7 to 33.
    Cityscapes27,
}

impl VocabularyPreset {
    /// Every preset.
    pub const ALL: [VocabularyPreset; 2] = [
        VocabularyPreset::CocoStuff27,
        VocabularyPreset::Cityscapes27,
    ];

    /// The name `--vocabulary` takes.
    pub fn name(self) -> &'static str {
        match self {
            VocabularyPreset::CocoStuff27 => "coco-stuff-27",
            VocabularyPreset::Cityscapes27 => "cityscapes-27",
        }
    }

    /// The dataset whose classes it lists.
    pub fn dataset(self) -> Dataset {
        match self {
            VocabularyPreset::CocoStuff27 => Dataset::CocoStuff27,
            VocabularyPreset::Cityscapes27 => Dataset::Cityscapes,
        }
    }
}

impl fmt::Display for VocabularyPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VocabularyPreset {
    type Err = ();

    /// The preset of that name (`coco-stuff-27`, `cityscapes-27`, any case).
    fn from_str(name: &str) -> Result<Self, ()> {
        VocabularyPreset::ALL
            .into_iter()
            .find(|preset| preset.name().eq_ignore_ascii_case(name.trim()))
            .ok_or(())
    }
}

/// The entries segments can be named after, and the prompt template each goes
/// through before the text encoder.
///
/// Entries are trimmed of surrounding whitespace and blank ones dropped;
/// duplicates (compared without case, since CLIP's tokenizer lowercases) are
/// refused rather than merged, so that entry `i` is always the `i`-th name given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    entries: Vec<String>,
    template: String,
}

/// One entry's place in a prompt of [`Vocabulary::prompts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryColumns {
    /// The entry's index in [`Vocabulary::entries`].
    pub entry: usize,
    /// Its token columns in the prompt's 77 (BOS is column 0), the template's
    /// own words excluded: the columns whose attention is averaged for it.
    pub columns: Range<usize>,
}

/// One 77-token prompt for the text encoder, holding several entries'
/// templated prompts one after another (one text-encoder pass each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VocabularyPrompt {
    /// The token ids: BOS, the entries' tokens, EOS, padding
    /// (for [`diffseg_sd::prompt_ids_tensor`]).
    pub ids: [i64; MAX_TOKENS],
    /// The entries it holds, in order.
    pub entries: Vec<EntryColumns>,
}

impl Vocabulary {
    /// A vocabulary of `entries` with the default template (`{}`, the entry itself).
    /// `source_name` says where the entries came from, for messages.
    pub fn new<S: AsRef<str>>(
        entries: impl IntoIterator<Item = S>,
        source_name: &str,
    ) -> Result<Vocabulary, VocabularyError> {
        let mut kept: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() {
                continue;
            }
            let index = kept.len();
            if index == MAX_ENTRIES {
                return Err(VocabularyError::TooManyEntries {
                    source_name: source_name.into(),
                    count: index + 1,
                });
            }
            if entry.len() > MAX_ENTRY_BYTES {
                return Err(VocabularyError::EntryTooLong {
                    source_name: source_name.into(),
                    index,
                    bytes: entry.len(),
                });
            }
            let lower = entry.to_lowercase();
            if let Some(first) = kept.iter().position(|seen| seen.to_lowercase() == lower) {
                return Err(VocabularyError::Duplicate {
                    source_name: source_name.into(),
                    entry: entry.into(),
                    first,
                    second: index,
                });
            }
            kept.push(entry.into());
        }
        if kept.is_empty() {
            return Err(VocabularyError::Empty {
                source_name: source_name.into(),
            });
        }
        Ok(Vocabulary {
            entries: kept,
            template: PLACEHOLDER.into(),
        })
    }

    /// `--vocabulary`'s value: a preset's name, or comma-separated entries.
    pub fn parse(text: &str) -> Result<Vocabulary, VocabularyError> {
        match text.parse::<VocabularyPreset>() {
            Ok(preset) => Ok(Vocabulary::preset(preset)),
            Err(()) => Vocabulary::new(text.split(','), "--vocabulary"),
        }
    }

    /// A file of one entry per line (UTF-8; blank lines dropped).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Vocabulary, VocabularyError> {
        let path = path.as_ref();
        let io = |error| VocabularyError::Io {
            path: path.to_path_buf(),
            error,
        };
        let length = std::fs::metadata(path).map_err(io)?.len();
        if length > MAX_FILE_BYTES {
            return Err(VocabularyError::BadFile {
                path: path.to_path_buf(),
                reason: format!("{length} bytes, more than the {MAX_FILE_BYTES} read"),
            });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|error| VocabularyError::BadFile {
            path: path.to_path_buf(),
            reason: format!("not UTF-8 text ({error})"),
        })?;
        Vocabulary::new(text.lines(), &path.display().to_string())
    }

    /// A preset's 27 class names.
    pub fn preset(preset: VocabularyPreset) -> Vocabulary {
        Vocabulary {
            entries: preset
                .dataset()
                .class_names()
                .iter()
                .map(|name| name.to_string())
                .collect(),
            template: PLACEHOLDER.into(),
        }
    }

    /// The same entries put through `template`, which holds `{}` once where the
    /// entry goes (e.g. `a photo of a {}`).
    pub fn with_template(self, template: &str) -> Result<Vocabulary, VocabularyError> {
        let bad = |reason: String| VocabularyError::BadTemplate {
            template: template.into(),
            reason,
        };
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_TEMPLATE_BYTES} allowed",
                template.len()
            )));
        }
        let count = template.matches(PLACEHOLDER).count();
        if count != 1 {
            return Err(bad(format!("must hold {{}} once, holds it {count} times")));
        }
        Ok(Vocabulary {
            template: template.into(),
            ..self
        })
    }

    /// The entries, in the order given.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The prompt template (`{}` by default).
    pub fn template(&self) -> &str {
        &self.template
    }

    /// Entry `index` through the template.
    pub fn prompt(&self, index: usize) -> Option<String> {
        let entry = self.entries.get(index)?;
        Some(self.template.replacen(PLACEHOLDER, entry, 1))
    }

    /// Each entry's templated prompt as token ids, with the range of the entry's
    /// own tokens among them.
    pub fn tokenize(
        &self,
        tokenizer: &ClipTokenizer,
    ) -> Result<Vec<(Vec<u32>, Range<usize>)>, VocabularyError> {
        let (before, after) = self
            .template
            .split_once(PLACEHOLDER)
            .unwrap_or((&self.template, ""));
        self.entries
            .iter()
            .map(|entry| {
                let prompt = format!("{before}{entry}{after}");
                let tokens = tokenizer.token_ids(&prompt)?;
                if tokens.is_empty() || tokens.len() > PROMPT_COLUMNS {
                    return Err(VocabularyError::EntryTokens {
                        entry: entry.clone(),
                        prompt,
                        tokens: tokens.len(),
                    });
                }
                // The entry's columns: the tokens of the text up to its end, less
                // those of the text before it, when both are prefixes of the
                // whole prompt's tokens (BPE keeps pieces apart at spaces).
                let head = tokenizer.token_ids(before)?;
                let through = tokenizer.token_ids(&format!("{before}{entry}"))?;
                let separate = tokens.starts_with(&through)
                    && through.starts_with(&head)
                    && through.len() > head.len();
                if !separate {
                    return Err(VocabularyError::TemplateMergesEntry {
                        entry: entry.clone(),
                        template: self.template.clone(),
                    });
                }
                Ok((tokens, head.len()..through.len()))
            })
            .collect()
    }

    /// The entries' prompts packed in order into as few 77-token prompts as they
    /// fill (BOS, prompts one after another, EOS, padding; no entry split
    /// between two), with each entry's token columns: one text-encoder pass per
    /// prompt encodes the whole vocabulary.
    pub fn prompts(
        &self,
        tokenizer: &ClipTokenizer,
    ) -> Result<Vec<VocabularyPrompt>, VocabularyError> {
        let mut packed: Vec<(Vec<u32>, Vec<EntryColumns>)> = Vec::new();
        for (entry, (tokens, own)) in self.tokenize(tokenizer)?.into_iter().enumerate() {
            if packed
                .last()
                .is_none_or(|(ids, _)| ids.len() + tokens.len() > PROMPT_COLUMNS)
            {
                packed.push((Vec::new(), Vec::new()));
            }
            if let Some((ids, entries)) = packed.last_mut() {
                // Column 0 is BOS.
                let start = 1 + ids.len();
                entries.push(EntryColumns {
                    entry,
                    columns: start + own.start..start + own.end,
                });
                ids.extend(tokens);
            }
        }
        Ok(packed
            .into_iter()
            .map(|(ids, entries)| VocabularyPrompt {
                ids: tokenizer.prompt_from_tokens(&ids),
                entries,
            })
            .collect())
    }
}
