package dashboard

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"

	"ebb.dev/ebb/internal/approvals"
)

// csrfCookie holds a random value per browser; a form's token is the server's HMAC of it, so
// another site can neither read nor forge one (the cookie is SameSite=Strict as well).
const csrfCookie = "ebb_csrf"

// csrf returns the CSRF token of the browser of r, giving it a cookie first when it has none.
func (s *Server) csrf(w http.ResponseWriter, r *http.Request) string {
	if s.opts.ReadOnly {
		return ""
	}
	value := ""
	if c, err := r.Cookie(csrfCookie); err == nil && len(c.Value) == 32 {
		value = c.Value
	} else {
		value = randomToken()
		http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: value, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode})
	}
	return s.sign(value)
}

func (s *Server) sign(value string) string {
	m := hmac.New(sha256.New, s.csrfKey)
	m.Write([]byte(value))
	return hex.EncodeToString(m.Sum(nil))
}

// checkCSRF reports whether r carries this browser's token and, when the browser says where
// the request comes from, comes from this site.
func (s *Server) checkCSRF(r *http.Request) error {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" {
		return errors.New("the request came from another site")
	}
	if origin := r.Header.Get("Origin"); origin != "" && origin != "null" {
		u, err := url.Parse(origin)
		if err != nil || u.Host != r.Host {
			return fmt.Errorf("the request came from %s, not this page", origin)
		}
	}
	c, err := r.Cookie(csrfCookie)
	if err != nil {
		return errors.New("the browser sent no CSRF cookie (are cookies off?)")
	}
	if !hmac.Equal([]byte(s.sign(c.Value)), []byte(r.PostFormValue("csrf"))) {
		return errors.New("the form's CSRF token does not match; reload the page and try again")
	}
	return nil
}

// handleDecision records an Approve or Reject from the execution page, as the user, and
// shows the API server's refusal plainly when it refuses.
func (s *Server) handleDecision(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if s.opts.ReadOnly {
		s.errorPage(w, http.StatusForbidden, "Read-only", "This dashboard is read-only: approvals are not possible here. Use `ebb approve` or `ebb dashboard` with your own kubeconfig.")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	if err := r.ParseForm(); err != nil {
		s.errorPage(w, http.StatusBadRequest, "Bad request", "read the form: "+err.Error())
		return
	}
	if err := s.checkCSRF(r); err != nil {
		s.errorPage(w, http.StatusForbidden, "Refused", "The decision was not recorded: "+err.Error())
		return
	}
	x, ok := s.feed.get(name)
	if !ok {
		s.errorPage(w, http.StatusNotFound, "Not found", fmt.Sprintf("execution %s not found in namespace %s", name, s.opts.Namespace))
		return
	}
	var approved bool
	switch r.PostFormValue("decision") {
	case "approve":
		approved = true
	case "reject":
	default:
		s.errorPage(w, http.StatusBadRequest, "Bad request", `the form's decision must be "approve" or "reject"`)
		return
	}
	stage := r.PostFormValue("stage")
	req := approvals.Request{Execution: x.Spec.DisplayName, Stage: stage, Approved: approved, Comment: r.PostFormValue("comment"), Namespace: s.opts.Namespace}
	decided, caller, err := approvals.Decide(r.Context(), s.opts.Kube, s.store, req, s.opts.Now())
	if err != nil {
		s.opts.Logger.Info("decision refused", "execution", x.Spec.DisplayName, "stage", stage, "user", caller, "err", err)
		v := s.executionViewOf(r, x, s.csrf(w, r))
		text := err.Error()
		var denied *approvals.DeniedError
		if errors.As(err, &denied) {
			text = fmt.Sprintf("Refused: the API server did not let %s %s stage %s. It said: %s", orSomeone(caller), verb(approved), stage, denied.Message)
		}
		v.Flash = &flash{Class: "error", Text: text}
		status := http.StatusConflict
		if denied != nil {
			status = http.StatusForbidden
		}
		s.render(w, status, "execution", v)
		return
	}
	s.opts.Logger.Info("decision recorded", "execution", x.Spec.DisplayName, "stage", decided.Spec.Stage, "user", caller, "approved", approved)
	http.Redirect(w, r, "/executions/"+name+"?decided="+url.QueryEscape(decided.Spec.Stage), http.StatusSeeOther)
}

func verb(approved bool) string {
	if approved {
		return "approve"
	}
	return "reject"
}

func orSomeone(user string) string {
	if user == "" {
		return "you"
	}
	return user
}
