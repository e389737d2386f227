package candles

import (
	"net/url"
	"strings"
)

// RedactURL returns u fit for logs, events and errors: user info becomes
// "redacted", and so do the values of query parameters whose names look
// like a credential (key, secret, token, signature, password, auth): an
// exchange or webhook URL may carry one there. Other parameters (symbol,
// interval) stay readable. A string that does not parse as a URL is
// replaced whole, since it cannot be checked.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL redacted)"
	}
	if p.User != nil {
		p.User = url.User("redacted")
	}
	if p.RawQuery != "" {
		q := p.Query()
		for k := range q {
			if secretParam(k) {
				q[k] = []string{"redacted"}
			}
		}
		p.RawQuery = q.Encode()
	}
	return p.String()
}

// secretParam reports whether a query parameter's name looks like a credential.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, w := range []string{"key", "secret", "token", "sig", "pass", "auth", "credential"} {
		if strings.Contains(n, w) {
			return true
		}
	}
	return false
}
