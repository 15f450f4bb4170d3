//! Route templates: how a request path becomes a low-cardinality `http.route`.
//!
//! A template is a path whose segments are literals, `{param}` (any one segment) or a final
//! `{*rest}` (any remainder). A path takes the most specific matching template (most
//! literal segments, then fewest wildcards); a path that matches none has no route, and its
//! path never becomes a metric label.

use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Template {
    text: Arc<str>,
    segments: Vec<Segment>,
    literals: usize,
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("route template {text:?} must start with '/'"));
        }
        let parts: Vec<&str> = text[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let segment = match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                Some(name) if name.starts_with('*') => {
                    if i + 1 != parts.len() {
                        return Err(format!("route template {text:?}: {{*…}} must be the last segment"));
                    }
                    Segment::Rest
                }
                Some(name) if !name.is_empty() => Segment::Param,
                Some(_) => return Err(format!("route template {text:?} has an empty {{}}")),
                None if part.contains(['{', '}']) => return Err(format!("route template {text:?}: braces must enclose a whole segment")),
                None => Segment::Literal((*part).to_owned()),
            };
            segments.push(segment);
        }
        let literals = segments.iter().filter(|s| matches!(s, Segment::Literal(_))).count();
        Ok(Self { text: text.into(), segments, literals })
    }

    fn matches(&self, path: &str) -> bool {
        let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
        for segment in &self.segments {
            match segment {
                Segment::Rest => return true,
                Segment::Param => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(lit) => {
                    if parts.next() != Some(lit.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    fn rank(&self) -> (usize, bool) {
        (self.literals, !self.segments.contains(&Segment::Rest))
    }
}

/// A set of route templates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTemplates {
    templates: Vec<Template>,
}

impl RouteTemplates {
    /// Parses `templates`, most specific first.
    pub fn parse(templates: &[String]) -> Result<Self, String> {
        let mut parsed = templates.iter().map(|t| Template::parse(t)).collect::<Result<Vec<_>, _>>()?;
        parsed.sort_by_key(|t| std::cmp::Reverse(t.rank()));
        Ok(Self { templates: parsed })
    }

    /// The template `path` matches, if any (query strings are not part of `path`).
    pub fn route(&self, path: &str) -> Option<&Arc<str>> {
        self.templates.iter().find(|t| t.matches(path)).map(|t| &t.text)
    }

    /// Whether there are no templates.
    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(t: &[&str]) -> RouteTemplates {
        RouteTemplates::parse(&t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).expect("valid")
    }

    #[test]
    fn the_most_specific_template_wins() {
        let r = routes(&["/static/{*file}", "/products/{id}", "/products/top", "/"]);
        let route = |p| r.route(p).map(|s| s.to_string());
        assert_eq!(route("/products/42").as_deref(), Some("/products/{id}"));
        assert_eq!(route("/products/top").as_deref(), Some("/products/top"));
        assert_eq!(route("/static/css/app.css").as_deref(), Some("/static/{*file}"));
        assert_eq!(route("/").as_deref(), Some("/"));
        assert_eq!(route("/products/42/reviews"), None);
        assert_eq!(route("/products/"), None, "a parameter needs a value");
        assert_eq!(route("/users/7"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in ["products", "/a/{*rest}/b", "/a/{}", "/a/x{id}"] {
            assert!(RouteTemplates::parse(&[bad.to_owned()]).is_err(), "{bad}");
        }
    }
}
