package redact

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"https://github.com/org/repo.git", "https://github.com/org/repo.git"},
		{"https://user:s3cret@github.com/org/repo.git", "https://***@github.com/org/repo.git"},
		{"https://ghp_token@github.com/org/repo.git", "https://***@github.com/org/repo.git"},
		{"ssh://git@github.com/org/repo.git", "ssh://git@github.com/org/repo.git"},
		{"ssh://git:s3cret@host/repo.git", "ssh://git:***@host/repo.git"},
		{"git+ssh://git:s3cret@host/repo.git", "git+ssh://git:***@host/repo.git"},
		{"http://web.dev.svc/healthz?token=s3cret", "http://web.dev.svc/healthz?token=***"},
		{"http://h/p?token=s3cret&verbose&empty=&b=2#frag", "http://h/p?token=***&verbose&empty=&b=***#frag"},
		{"http://u:p@h?token=s3cret", "http://***@h?token=***"},
		{"http://h/a@b/c", "http://h/a@b/c"},
		{"http://user:p@ss@h/x", "http://***@h/x"},
		{"http://h/x?bad=%zz", "http://h/x?bad=***"},
		{"web.dev.svc/healthz?token=s3cret", "web.dev.svc/healthz?token=***"},
		{"", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, URL(tt.in))
		})
	}
}

func TestText(t *testing.T) {
	tests := []struct{ in, want string }{
		{"no url here?token=x", "no url here?token=x"},
		{`Get "http://h/healthz?token=s3cret": dial tcp: refused`, `Get "http://h/healthz?token=***": dial tcp: refused`},
		{"fetch from 'http://u:s3cret@h/r.git' failed", "fetch from 'http://***@h/r.git' failed"},
		{"two: https://a:b@x/y and ssh://git:c@z/w, done", "two: https://***@x/y and ssh://git:***@z/w, done"},
		{"parse \"http://h/x?token=s3cret\x7f\": invalid control character", "parse \"http://h/x?token=***\": invalid control character"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			assert.Equal(t, tt.want, Text(tt.in))
		})
	}
}
