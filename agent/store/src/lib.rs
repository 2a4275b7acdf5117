//! The storage back end: ciphertext trees confined beneath a volume root, change journal, version history.
