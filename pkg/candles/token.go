package candles

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
)

// jobTokenBytes is the size of a job token: 256 random bits.
const jobTokenBytes = 32

// NewJobToken returns a new random job token (hex), the secret that ties a
// job's batches to the job the run planned (Job.Token).
func NewJobToken() (string, error) {
	b := make([]byte, jobTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("job token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// TokenSHA256 is the hex SHA-256 of token, what sync.started announces
// (JobGrant.TokenSHA256) instead of the token.
func TokenSHA256(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:])
}

// TokenMatches reports whether token hashes to want (hex SHA-256), in
// constant time. An empty token or hash never matches.
func TokenMatches(token, want string) bool {
	if token == "" || want == "" {
		return false
	}
	got := TokenSHA256(token)
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}
