//! Quoting an argument vector for the remote shell. SSH carries one command *line*, which
//! the login shell splits; each word is therefore single-quoted (the only POSIX quoting with
//! no special characters inside), and a `'` in a word ends the quote, adds `\'` and reopens
//! it. The result is the same argv on any POSIX shell (sh, dash, bash, zsh).

/// One word, quoted.
pub fn word(w: &str) -> String {
    let mut out = String::with_capacity(w.len() + 2);
    out.push('\'');
    for c in w.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// The command line of `argv`, each word quoted. `Err(index)`: that word holds a NUL, which
/// no command line can carry.
pub fn command_line(argv: &[String]) -> Result<String, usize> {
    if let Some(index) = argv.iter().position(|w| w.contains('\0')) {
        return Err(index);
    }
    Ok(argv.iter().map(|w| word(w)).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shell gives back what was quoted, word for word.
    #[test]
    fn sh_splits_back_to_the_same_words() {
        let argv: Vec<String> = [
            "printf",
            "%s\\n",
            "two words",
            "it's",
            "'",
            "\"dq\"",
            "a;b",
            "$(echo pwned)",
            "`id`",
            "",
            "new\nline",
            "*",
            "~",
            "\\",
            "é ü",
        ]
        .map(String::from)
        .to_vec();
        let line = command_line(&argv).unwrap();
        let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
        let expected: String = argv[2..].iter().map(|w| format!("{w}\n")).collect();
        assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    }

    #[test]
    fn nul_is_refused() {
        assert_eq!(command_line(&["a".into(), "b\0c".into()]), Err(1));
    }
}
