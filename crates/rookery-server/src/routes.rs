//! The route table: path patterns from `[[routes]]`, compiled into a radix-tree router.
//!
//! A pattern matches as a prefix: `/counter/:name` matches `/counter/a` and `/counter/a/x/y`;
//! the object sees the route's `rewrite` followed by the rest (`/x/y`).

use http::Method;
use rookery::{Namespace, Runtime};

use crate::config::{Config, ConfigError, RouteConfig};
use crate::prometheus::RouteMetrics;
use crate::route_pattern::router_pattern;

/// Name of the catch-all parameter holding the rest of the path.
const REST: &str = "rookery_rest";

/// How a route picks its object from the path.
#[derive(Debug, Clone)]
pub(crate) enum Pick {
    /// `id_from_name` of these parameters' values, joined by `/`.
    Name(Vec<String>),
    /// `id_from_string` of this parameter's value.
    Id(String),
}

/// The object a route leads to.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) namespace: Namespace,
    pub(crate) pick: Pick,
}

/// A rate limit checked before a route is served.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    pub(crate) namespace: Namespace,
    /// The request the limiter object receives.
    pub(crate) uri: String,
}

/// One compiled route.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) target: Option<Target>,
    /// The worker takes the route's requests.
    pub(crate) worker: bool,
    pub(crate) rewrite: String,
    pub(crate) rate_limit: Option<RateLimit>,
    /// Its requests' metrics, labelled with its pattern.
    pub(crate) metrics: RouteMetrics,
}

/// A request path matched to a route.
pub(crate) struct Matched<'r, 'p> {
    pub(crate) route: &'r Route,
    pub(crate) params: matchit::Params<'r, 'p>,
}

impl Matched<'_, '_> {
    /// The path the object sees: the rewrite followed by the unmatched rest.
    pub(crate) fn object_path(&self) -> String {
        let rest = self.params.get(REST).unwrap_or("");
        let base = self.route.rewrite.trim_end_matches('/');
        if rest.is_empty() {
            if base.is_empty() {
                "/".to_string()
            } else {
                base.to_string()
            }
        } else {
            format!("{base}/{rest}")
        }
    }
}

/// All routes of a configuration.
pub(crate) struct Routes {
    router: matchit::Router<usize>,
    routes: Vec<Route>,
}

impl Routes {
    /// Checks that the patterns of `config` can all live in one router (no two conflict),
    /// before anything is started.
    pub(crate) fn check(config: &Config) -> Result<(), ConfigError> {
        router(config).map(drop)
    }

    /// Compiles the routes of `config` against the bindings of `runtime`.
    pub(crate) fn build(config: &Config, runtime: &Runtime) -> Result<Self, ConfigError> {
        let router = router(config)?;
        let routes = config
            .routes
            .iter()
            .map(|rc| compile(config, rc, runtime))
            .collect::<Result<_, _>>()?;
        Ok(Self { router, routes })
    }

    /// The route that takes `method` on `path`, if any.
    pub(crate) fn find<'r, 'p>(
        &'r self,
        method: &Method,
        path: &'p str,
    ) -> Option<Matched<'r, 'p>> {
        // `/counter/a/` is `/counter/a`: an empty rest does not match a catch-all.
        let m = match self.router.at(path) {
            Ok(m) => m,
            Err(_) if path.len() > 1 && path.ends_with('/') => {
                self.router.at(&path[..path.len() - 1]).ok()?
            }
            Err(_) => return None,
        };
        let route = &self.routes[*m.value];
        // As the seed's Worker does: a method the route does not take finds nothing.
        if route
            .methods
            .as_ref()
            .is_some_and(|ms| !ms.contains(method))
        {
            return None;
        }
        Some(Matched {
            route,
            params: m.params,
        })
    }
}

/// The radix tree of `config`'s patterns, each leading to its route's position.
fn router(config: &Config) -> Result<matchit::Router<usize>, ConfigError> {
    let mut router = matchit::Router::new();
    for (i, rc) in config.routes.iter().enumerate() {
        let at = rc.path.span().start;
        let base = router_pattern(rc.path.get_ref());
        let exact = if base.is_empty() {
            "/".to_string()
        } else {
            base.clone()
        };
        for pattern in [exact, format!("{base}/{{*{REST}}}")] {
            router
                .insert(pattern, i)
                .map_err(|e| config.error_at(at, format!("route {:?}: {e}", rc.path.get_ref())))?;
        }
    }
    Ok(router)
}

fn compile(config: &Config, rc: &RouteConfig, runtime: &Runtime) -> Result<Route, ConfigError> {
    let namespace = |b: &toml::Spanned<String>| {
        runtime
            .namespace(b.get_ref())
            .map_err(|e| config.error_at(b.span().start, e.to_string()))
    };
    let target = match &rc.binding {
        Some(b) => Some(Target {
            namespace: namespace(b)?,
            pick: match (&rc.name_from, &rc.id_from) {
                (Some(p), _) => Pick::Name(
                    crate::route_pattern::name_params(p)
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                ),
                (None, Some(p)) => Pick::Id(p.clone()),
                (None, None) => {
                    return Err(config.error_at(b.span().start, "no name_from or id_from"));
                }
            },
        }),
        None => None,
    };
    let rate_limit = match &rc.rate_limit {
        Some(rl) => Some(RateLimit {
            namespace: namespace(&rl.binding)?,
            uri: format!("/?limit={}&window={}", rl.limit, rl.window_ms),
        }),
        None => None,
    };
    let methods = rc.methods.as_ref().map(|ms| {
        ms.iter()
            .filter_map(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok())
            .collect()
    });
    Ok(Route {
        methods,
        target,
        worker: rc.worker,
        rewrite: rc.rewrite.clone(),
        rate_limit,
        metrics: RouteMetrics::new(rc.path.get_ref()),
    })
}
