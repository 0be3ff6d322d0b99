//! Cloud API answers, bounded: a provider's answer is as hostile as any input. A body is read
//! in chunks and refused past [`MAX_ANSWER_BYTES`], so a broken or hostile endpoint cannot make
//! the server hold an unbounded answer. (What a failure's text may put in a record is bounded
//! once, by [`crate::ProviderError::recorded`].)

/// Largest answer body read from a cloud API (a page of a list is far smaller).
pub const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error(transparent)]
    Transport(#[from] reqwest::Error),
    #[error("the answer is over {MAX_ANSWER_BYTES} bytes; refused")]
    TooLarge,
}

/// The whole body of `resp`, at most [`MAX_ANSWER_BYTES`].
pub async fn body(mut resp: reqwest::Response) -> Result<Vec<u8>, AnswerError> {
    if resp.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(AnswerError::TooLarge);
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(AnswerError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}
