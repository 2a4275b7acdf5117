//! Storage role: serves the ciphertext of each configured volume over qrexec.
