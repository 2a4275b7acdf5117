//! Passphrases from the terminal (no echo) or a file, held in zeroizing memory.
