import re,subprocess,sys,collections
# Public items per top-level module at a commit: `pub` items (fn, struct, enum, trait, const,
# static, type, use, macro; test modules left out) in files whose whole module chain is `pub`.
# Usage: python3 experiments/code-shape/public_items.py REV   (run in the repository)
rev=sys.argv[1]
files=subprocess.run(['git','ls-tree','-r','--name-only',rev,'src'],capture_output=True,text=True).stdout.split()
files=[f for f in files if f.endswith('.rs') and not f.startswith('src/cli') and f!='src/main.rs']
text={f:subprocess.run(['git','show',f'{rev}:{f}'],capture_output=True,text=True).stdout for f in files}
def modpath(f):
    p=f[4:-3].split('/')
    if p[-1]=='mod': p=p[:-1]
    return tuple(p) if p!=['lib'] else ()
def decl_file(m):
    parent=m[:-1]
    for c in (['src/lib.rs'] if not parent else ['src/'+'/'.join(parent)+'/mod.rs','src/'+'/'.join(parent)+'.rs']):
        if c in text: return c
pubmod={}
def is_public(m):
    if m==(): return True
    d=decl_file(m)
    if d is None: return False
    t=text[d]
    if re.search(r'^\s*pub mod '+m[-1]+r'\s*;',t,re.M): return is_public(m[:-1])
    return False
count=collections.Counter(); total=0
for f,t in text.items():
    m=modpath(f)
    if not is_public(m): continue
    i=t.find('#[cfg(test)]\nmod ')
    if i>=0: t=t[:i]
    n=len(re.findall(r'^\s*pub (?:unsafe )?(?:fn|struct|enum|trait|const|static|type|use|macro)\b',t,re.M))
    count[m[0] if m else 'lib']+=n
for k in sorted(count): print(k,count[k])
print('total',sum(count.values()))
