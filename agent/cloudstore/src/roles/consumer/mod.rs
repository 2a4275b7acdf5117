//! Consumer role: mounts each configured volume as a decrypted folder.
