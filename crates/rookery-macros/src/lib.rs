//! `#[rookery::service]`: declares the methods an object serves to typed calls.
//!
//! Use it through the `rookery` crate, which re-exports it; the generated code names only
//! `::rookery` items. See `rookery::service` for the whole story.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    FnArg, Ident, ItemTrait, Pat, ReturnType, TraitItem, TraitItemFn, Type, parse_macro_input,
};

/// Turns a trait of `async fn`s into a service: the trait (with `Send` futures and a `serve`
/// method that runs a `rookery::Call`), and a typed stub `<Trait>Stub` whose methods call an
/// object. See the `rookery` crate's documentation of `service`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(Span::call_site(), "#[rookery::service] takes no arguments")
            .to_compile_error()
            .into();
    }
    let item = parse_macro_input!(item as ItemTrait);
    match expand(item) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

/// One method of the service, as the stub and `serve` need it.
struct Method {
    /// The method as the trait declares it, rewritten to return a `Send` future.
    declaration: TokenStream2,
    name: Ident,
    /// Doc comments and other outer attributes, copied to the stub's method.
    docs: Vec<syn::Attribute>,
    args: Vec<(Ident, Type)>,
    output: Type,
}

fn expand(item: ItemTrait) -> syn::Result<TokenStream2> {
    if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            item.generics.span(),
            "a service trait takes no generic parameters",
        ));
    }
    let methods = item
        .items
        .iter()
        .map(|it| match it {
            TraitItem::Fn(f) => method(f),
            other => Err(syn::Error::new(
                other.span(),
                "a service trait holds only `async fn` methods",
            )),
        })
        .collect::<syn::Result<Vec<_>>>()?;

    let ItemTrait {
        attrs,
        vis,
        unsafety,
        ident,
        supertraits,
        colon_token,
        ..
    } = &item;
    let service = ident.to_string();
    let stub = format_ident!("{}Stub", ident);
    let declarations = methods.iter().map(|m| &m.declaration);
    let arms = methods.iter().map(|m| {
        let name = &m.name;
        let wire = name.to_string();
        let names: Vec<&Ident> = m.args.iter().map(|(n, _)| n).collect();
        let types = m.args.iter().map(|(_, t)| t);
        quote! {
            #wire => {
                let (#(#names,)*): (#(#types,)*) = call.args()?;
                ::rookery::Reply::of(self.#name(#(#names),*).await)
            }
        }
    });
    let stub_methods = methods.iter().map(|m| {
        let Method {
            name,
            docs,
            args,
            output,
            ..
        } = m;
        let wire = name.to_string();
        let names: Vec<&Ident> = args.iter().map(|(n, _)| n).collect();
        let params = args.iter().map(|(n, t)| quote! { #n: #t });
        quote_spanned! {name.span()=>
            #(#docs)*
            #vis fn #name(&self, #(#params),*)
                -> impl ::core::future::Future<Output = ::rookery::CallResult<#output>>
                    + ::core::marker::Send + '_
            {
                // Encoded now, so the future holds bytes, not the arguments.
                let call = ::rookery::Call::new(#service, #wire, &(#(#names,)*));
                async move { self.0.call::<#output>(call?).await }
            }
        }
    });
    let stub_doc = format!(
        "A typed stub for objects that serve [`{service}`]: each method is a call of the \
         object, run as one of its turns (serial, atomic, output-gated)."
    );
    let serve_doc = format!(
        "Runs `call` if it calls a method of `{service}`: decodes the arguments, runs the \
         method and encodes what it returns. Implement `DurableObject::call` with it."
    );
    Ok(quote! {
        #(#attrs)*
        #vis #unsafety trait #ident #colon_token #supertraits {
            #(#declarations)*

            #[doc = #serve_doc]
            fn serve(
                &mut self,
                call: ::rookery::Call,
            ) -> impl ::core::future::Future<Output = ::rookery::Result<::rookery::Reply>>
                + ::core::marker::Send
            where
                Self: ::core::marker::Sized + ::core::marker::Send,
            {
                async move {
                    if call.service() != #service {
                        return ::core::result::Result::Err(call.unknown());
                    }
                    match call.method() {
                        #(#arms)*
                        _ => ::core::result::Result::Err(call.unknown()),
                    }
                }
            }
        }

        #[doc = #stub_doc]
        #[derive(Clone, Debug)]
        #vis struct #stub(::rookery::Stub);

        impl ::core::convert::From<::rookery::Stub> for #stub {
            fn from(stub: ::rookery::Stub) -> Self {
                Self(stub)
            }
        }

        impl ::core::ops::Deref for #stub {
            type Target = ::rookery::Stub;

            fn deref(&self) -> &::rookery::Stub {
                &self.0
            }
        }

        impl #stub {
            #(#stub_methods)*
        }
    })
}

/// Checks one trait method and rewrites it to return a `Send` future.
fn method(f: &TraitItemFn) -> syn::Result<Method> {
    let sig = &f.sig;
    let name = sig.ident.clone();
    if name == "serve" {
        return Err(syn::Error::new(
            name.span(),
            "`serve` is the method the service generates; name this method otherwise",
        ));
    }
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span(),
            "a service method is an `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a service method takes no generic parameters: its arguments cross a wire",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(syn::Error::new(
            v.span(),
            "a service method is not variadic",
        ));
    }
    let mut inputs = sig.inputs.iter();
    let receiver = match inputs.next() {
        Some(FnArg::Receiver(r)) if r.reference.is_some() && r.colon_token.is_none() => r,
        other => {
            return Err(syn::Error::new(
                other.map_or_else(|| sig.span(), Spanned::span),
                "a service method takes `&mut self` (or `&self`) first",
            ));
        }
    };
    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(pt) = input else {
            return Err(syn::Error::new(input.span(), "only one `self`"));
        };
        let Pat::Ident(pi) = &*pt.pat else {
            return Err(syn::Error::new(
                pt.pat.span(),
                "a service method's arguments are plain names (`owner: String`)",
            ));
        };
        if pi.by_ref.is_some() || pi.subpat.is_some() {
            return Err(syn::Error::new(
                pt.pat.span(),
                "a service method's arguments are plain names (`owner: String`)",
            ));
        }
        if let Type::Reference(r) = &*pt.ty {
            return Err(syn::Error::new(
                r.span(),
                "a typed call's arguments are owned values, encoded to cross to the object \
                 (`String`, not `&str`)",
            ));
        }
        args.push((pi.ident.clone(), (*pt.ty).clone()));
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => (**ty).clone(),
        ReturnType::Default => {
            return Err(syn::Error::new(
                sig.span(),
                "a service method returns a `Result<T, E>` (T and E are serde types)",
            ));
        }
    };
    let docs: Vec<syn::Attribute> = f
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .cloned()
        .collect();
    let attrs = &f.attrs;
    let params = args.iter().map(|(n, t)| quote! { #n: #t });
    let ret = quote! {
        impl ::core::future::Future<Output = #output> + ::core::marker::Send
    };
    let declaration = match &f.default {
        None => quote! {
            #(#attrs)*
            fn #name(#receiver, #(#params),*) -> #ret;
        },
        Some(body) => quote! {
            #(#attrs)*
            fn #name(#receiver, #(#params),*) -> #ret {
                async move #body
            }
        },
    };
    Ok(Method {
        declaration,
        name,
        docs,
        args,
        output,
    })
}
